// Command hello is the sample backend of the demo: a small web page served
// on a local address, to be published through a diglett tunnel.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:9000", "address to serve on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from behind the NAT!\nYou reached %s through a diglett tunnel; your address as the backend sees it: %s\n", r.Host, r.RemoteAddr)
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("hello backend on http://%s", *addr)
	log.Fatal(srv.ListenAndServe())
}
