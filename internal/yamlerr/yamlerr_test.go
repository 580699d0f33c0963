package yamlerr

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestDescribe(t *testing.T) {
	for src, want := range map[string]string{
		"a: 1":   "a mapping",
		"[1, 2]": "a list",
		"~":      "nothing",
		"soon":   `"soon"`,
		"12":     `"12"`,
	} {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
			t.Fatal(err)
		}
		if got := Describe(doc.Content[0]); got != want {
			t.Errorf("Describe(%s) = %s, want %s", src, got, want)
		}
	}
}
