module github.com/diglett/diglett

go 1.26.8

require (
	github.com/alecthomas/kong v1.17.0
	github.com/xtaci/smux v1.5.56
	go.yaml.in/yaml/v3 v3.0.6
)

require (
	github.com/hashicorp/yamux v0.1.2
	github.com/libp2p/go-yamux/v5 v5.1.0
	go.uber.org/goleak v1.3.0
)

require github.com/libp2p/go-buffer-pool v0.0.2 // indirect
