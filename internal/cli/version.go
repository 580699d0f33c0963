package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Commit is the commit the binary was built from, set like Version by
// make build and make release, for builds whose toolchain records no
// version control information (-buildvcs=false).
var Commit = ""

// versionText is what --version prints for the program name: the version,
// the commit it was built from, the Go version and the platform. The
// version is Version when the build set it (make build, make release);
// otherwise it comes from the build information the Go toolchain embeds,
// which holds the module version of a binary built by "go install
// ...@VERSION" and the commit of one built in a checkout.
func versionText(name string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return formatVersion(name, Version, bi)
}

// formatVersion is versionText with its inputs given; bi may be nil (no
// build information).
func formatVersion(name, version string, bi *debug.BuildInfo) string {
	goVersion := runtime.Version()
	platform := runtime.GOOS + "/" + runtime.GOARCH
	commit, modified := Commit, false
	if bi != nil {
		if version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		var goos, goarch string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			case "GOOS":
				goos = s.Value
			case "GOARCH":
				goarch = s.Value
			}
		}
		if goos != "" && goarch != "" {
			platform = goos + "/" + goarch
		}
	}
	if version == "" {
		version = "dev"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", name, version)
	switch {
	case commit == "":
		b.WriteString("commit: unknown\n")
	case modified:
		fmt.Fprintf(&b, "commit: %s (modified)\n", commit)
	default:
		fmt.Fprintf(&b, "commit: %s\n", commit)
	}
	fmt.Fprintf(&b, "go: %s\nplatform: %s", goVersion, platform)
	return b.String()
}
