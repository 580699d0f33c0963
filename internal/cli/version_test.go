package cli

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFormatVersion(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	for _, tc := range []struct {
		name, version string
		bi            *debug.BuildInfo
		want          string
	}{
		{"go install @version", "dev", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"},
			Settings: settings("GOOS", "linux", "GOARCH", "arm64")},
			"diglett v1.4.0\ncommit: unknown\ngo: go1.26.8\nplatform: linux/arm64"},
		{"checkout, changed", "dev", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("vcs.revision", "0123abcd", "vcs.modified", "true", "GOOS", "darwin", "GOARCH", "amd64")},
			"diglett dev\ncommit: 0123abcd (modified)\ngo: go1.26.8\nplatform: darwin/amd64"},
		{"make build", "v1.5.0-3-gabcdef", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("vcs.revision", "abcdef0", "vcs.modified", "false", "GOOS", "windows", "GOARCH", "amd64")},
			"diglett v1.5.0-3-gabcdef\ncommit: abcdef0\ngo: go1.26.8\nplatform: windows/amd64"},
		{"no build information", "dev", nil,
			"diglett dev\ncommit: unknown\ngo: " + runtime.Version() + "\nplatform: " + runtime.GOOS + "/" + runtime.GOARCH},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatVersion("diglett", tc.version, tc.bi); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
