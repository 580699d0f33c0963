package inspect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// replayTimeout bounds a replay, from the dial to the end of the response.
const replayTimeout = 30 * time.Second

var (
	// ErrNoBackend refuses a replay when the inspector has no Dial.
	ErrNoBackend = errors.New("replay: the inspector cannot reach the backends")
	// ErrIncompleteBody refuses a replay of a request whose body was not
	// recorded in full.
	ErrIncompleteBody = fmt.Errorf("replay: the request body was not recorded in full (only the first %d KiB are kept)", BodyLimit>>10)
)

// hopHeaders are the headers of one connection, not of the request: a
// replay does not send them.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// Replay sends e's request again, straight to its tunnel's backend: the
// method, target and headers (but those of the connection) with the
// recorded body. The exchange is recorded as a new entry, returned also
// with an error when the backend could not be reached; the error is
// ErrNoBackend or ErrIncompleteBody (and no entry) when the request cannot
// be replayed.
func (in *Inspector) Replay(ctx context.Context, e *Entry) (*Entry, error) {
	if in.cfg.Dial == nil {
		return nil, ErrNoBackend
	}
	if e.Request.Truncated || !e.Request.Complete {
		return nil, ErrIncompleteBody
	}
	u, err := url.ParseRequestURI(e.Path)
	if err != nil {
		return nil, fmt.Errorf("replay: target %q: %w", e.Path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	u.Scheme, u.Host = "http", e.Host
	if u.Host == "" {
		u.Host = "backend"
	}
	req, err := http.NewRequestWithContext(ctx, e.Method, u.String(), bytes.NewReader(e.Request.Body))
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	req.Host = e.Host
	req.Header = e.rawHeader.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	for _, f := range req.Header["Connection"] {
		for _, h := range strings.Split(f, ",") {
			req.Header.Del(strings.TrimSpace(h))
		}
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = nil // send none, as the visitor did
	}
	req.ContentLength = int64(len(e.Request.Body))
	if req.ContentLength == 0 {
		req.Body = http.NoBody
	}
	tunnel := e.Tunnel
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return in.cfg.Dial(ctx, tunnel)
		},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	defer tr.CloseIdleConnections()
	start := time.Now()
	n := &Entry{
		Summary: Summary{
			Time:     start,
			Tunnel:   tunnel,
			Method:   e.Method,
			Host:     e.Host,
			Path:     e.Path,
			Proto:    "HTTP/1.1",
			ReplayOf: e.ID,
		},
		Request: Message{
			Header:   redact(req.Header),
			Body:     e.Request.Body,
			Size:     e.Request.Size,
			Complete: true,
		},
		rawHeader: req.Header,
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		n.Error = "replay: " + err.Error()
		n.DurationMS = float64(time.Since(start).Microseconds()) / 1000
		in.add(n)
		return n, errors.New(n.Error)
	}
	defer resp.Body.Close()
	n.Status = resp.StatusCode
	n.Response.Header = redact(resp.Header)
	if err := readBody(&n.Response, resp.Body); err != nil {
		n.Error = "replay: response body: " + cause(err)
	}
	n.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	in.add(n)
	return n, nil
}
