module github.com/diglett/diglett

go 1.26.8

require (
	github.com/alecthomas/kong v1.17.0 // indirect
	github.com/hashicorp/yamux v0.1.2 // indirect
	github.com/xtaci/smux v1.5.56 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
)
