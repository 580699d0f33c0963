// Package webhook is the registerer that POSTs each event of a route as
// JSON to an HTTP(S) endpoint of the operator's: when a tunnel's route
// is published ("register"), when it is taken down ("unregister") and
// once when the gateway starts ("sweep": forget every route you were
// told of before). With a secret the body is signed (HMAC-SHA256 in
// X-Diglett-Signature). A 2xx answer is success; anything else (another
// status, a redirect, a timeout, no answer) is a failure, which the
// gateway retries with backoff.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/register/event"
)

// Events, the values of "event" and of X-Diglett-Event.
const (
	EventRegister   = event.Register
	EventUnregister = event.Unregister
	EventSweep      = event.Sweep
)

// Headers of each POST.
const (
	// HeaderEvent is the event, as in the body.
	HeaderEvent = "X-Diglett-Event"
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body
	// with the secret; only with a secret.
	HeaderSignature = "X-Diglett-Signature"
)

// DefaultTimeout bounds a call of the webhook when Config.Timeout is
// zero.
const DefaultTimeout = 10 * time.Second

// Bounds of an answer.
const (
	// MaxAnswer bounds the body of an answer that is read; the rest is
	// ignored.
	MaxAnswer = 64 << 10
	// maxReason bounds, in runes, the line of an answer an error quotes.
	maxReason = 200
)

// Config configures a Webhook. Zero fields take the defaults documented
// on them.
type Config struct {
	// URL is where events are POSTed: http or https. Required.
	URL string
	// Secret, when set, is the key of the HMAC-SHA256 signature of each
	// body, sent in X-Diglett-Signature. Default: no signature.
	Secret []byte
	// Timeout bounds each call. Default: DefaultTimeout.
	Timeout time.Duration
	// RootCAs verifies the endpoint's certificate. Default: the system
	// roots.
	RootCAs *x509.CertPool
	// Logger is where successful calls are logged, at Debug. Default:
	// slog.Default().
	Logger *slog.Logger
}

// Webhook is a registerer that POSTs each event to a URL.
type Webhook struct {
	// Registerer calls post for each event.
	event.Registerer

	url     string
	name    string // in logs: "webhook" and the URL, less any password
	secret  []byte
	timeout time.Duration
	client  *http.Client
	log     *slog.Logger
	now     func() time.Time // for tests
}

var (
	_ gateway.Registerer = (*Webhook)(nil)
	_ gateway.Sweeper    = (*Webhook)(nil)
)

// New checks c and builds its Webhook. It calls nothing.
func New(c Config) (*Webhook, error) {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("url: want an http:// or https:// URL such as https://hooks.internal/diglett")
	}
	if c.Secret != nil && len(c.Secret) == 0 {
		return nil, errors.New("secret: empty")
	}
	if c.Timeout < 0 {
		return nil, errors.New("timeout cannot be negative")
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12}
	// Events are few: no connection is kept between them, so nothing of
	// the Webhook outlives a call.
	tr.DisableKeepAlives = true
	w := &Webhook{
		url:     c.URL,
		name:    "webhook " + u.Redacted(),
		secret:  c.Secret,
		timeout: c.Timeout,
		client: &http.Client{
			Transport: tr,
			// A redirect is an answer like any other that is not 2xx: a
			// failure, and the event goes nowhere else.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log: c.Logger.With("webhook", u.Redacted()),
		now: time.Now,
	}
	w.Registerer = event.Registerer{Notify: w.post}
	return w, nil
}

// String names the webhook in the gateway's logs.
func (w *Webhook) String() string { return w.name }

// Event is the JSON body of each POST. Every field is always there; on
// sweep the route's are empty (hosts is [] rather than null).
type Event struct {
	Event    string    `json:"event"`    // register, unregister or sweep
	Name     string    `json:"name"`     // the tunnel's name
	Hosts    []string  `json:"hosts"`    // its host names: NAME.DOMAIN first, when the gateway has a domain
	Port     int       `json:"port"`     // its public TCP port on the gateway
	Identity string    `json:"identity"` // the owner of the name
	Time     time.Time `json:"time"`     // when the gateway sent the event, UTC
}

// errTimedOut is the cause of a call's context at the webhook's timeout.
var errTimedOut = errors.New("timed out")

// post POSTs event for r (nil on sweep) and returns an error unless the
// answer is 2xx.
func (w *Webhook) post(ctx context.Context, event string, r *gateway.Route) error {
	v := Event{Event: event, Hosts: []string{}, Time: w.now().UTC()}
	if r != nil {
		v.Name, v.Port, v.Identity = r.Name, r.Port, r.Identity
		if r.Hosts != nil {
			v.Hosts = r.Hosts
		}
	}
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", event, err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, w.timeout, errTimedOut)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook %s: %w", event, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEvent, event)
	if w.secret != nil {
		req.Header.Set(HeaderSignature, Sign(w.secret, body))
	}
	stopped := func(err error) error {
		if why := context.Cause(ctx); errors.Is(why, errTimedOut) {
			return fmt.Errorf("webhook %s: timed out after %v", event, w.timeout)
		} else if why != nil {
			return fmt.Errorf("webhook %s: stopped: %v", event, why)
		}
		return fmt.Errorf("webhook %s: %w", event, err)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL is the webhook's, known to the reader
		}
		return stopped(err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
	if err != nil {
		return stopped(fmt.Errorf("read answer: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		reason := firstLine(answer)
		if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode <= 399 && loc != "" {
			reason = "redirect to " + printable.String(loc, maxReason) + " not followed"
		}
		if reason != "" {
			reason = ": " + reason
		}
		return fmt.Errorf("webhook %s: %s%s", event, resp.Status, reason)
	}
	log := w.log.With("event", event)
	if r != nil {
		log = log.With("tunnel", r.Name)
	}
	log.Debug("webhook called", "status", resp.StatusCode)
	return nil
}

// Sign is the value of X-Diglett-Signature for body: "sha256=" and the
// hex HMAC-SHA256 of body with secret. An endpoint checks it by
// computing the same over the body it received and comparing in
// constant time (hmac.Equal).
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// firstLine is the first non-empty line of an answer, made safe to
// print and bounded.
func firstLine(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return printable.String(line, maxReason)
		}
	}
	return ""
}
