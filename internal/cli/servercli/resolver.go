package servercli

import (
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/config/configfile"
	"github.com/diglett/diglett/internal/cli"
)

// serverResolver reads diglett-server's --config file (config.LoadServer).
func serverResolver() *cli.FileResolver {
	return &cli.FileResolver{Load: unwrap(config.LoadServer)}
}

// homeResolver reads the --config file of diglett-server portmap
// (config.LoadHome).
func homeResolver() *cli.FileResolver {
	return &cli.FileResolver{Load: unwrap(config.LoadHome)}
}

// unwrap is load as a cli.FileResolver takes it.
func unwrap(load func(string, config.Schema) (*config.File, error)) func(string, configfile.Schema) (*configfile.File, error) {
	return func(path string, schema configfile.Schema) (*configfile.File, error) {
		f, err := load(path, schema)
		if f == nil {
			return nil, err
		}
		return f.File, err
	}
}

// serverFile is the file fr read, with the gateway's modules built from
// it: nil without --config.
func serverFile(fr *cli.FileResolver) *config.File {
	if fr.File() == nil {
		return nil
	}
	return &config.File{File: fr.File()}
}
