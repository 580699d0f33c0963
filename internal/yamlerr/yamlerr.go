// Package yamlerr words YAML values for the errors the project's files
// give (the config file, the tokens file): what was written, in terms a
// user knows, never a Go type name.
package yamlerr

import (
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Describe words a node for an error: the value as written, or what it is.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}
