package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett"
)

// The messages a user reads when the command line or the network is not
// what the program expects: each says what happened and what to do.

// defaultGatewayPort is the port of a gateway given without one (-g HOST):
// the gateway's default --listen port.
const defaultGatewayPort = "20000"

// gatewayAddr accepts HOST:PORT or a bare HOST, which means port 20000.
func gatewayAddr(s string) (string, error) {
	if strings.Contains(s, "://") {
		return "", fmt.Errorf("--gateway %q: want HOST or HOST:PORT (the gateway's agent port), not a URL", s)
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if host == "" || strings.ContainsAny(host, "/ ") || (strings.Contains(host, ":") && net.ParseIP(host) == nil) {
		return "", fmt.Errorf("--gateway %q: want HOST or HOST:PORT, e.g. gateway.com:20000", s)
	}
	return net.JoinHostPort(host, defaultGatewayPort), nil
}

// gatewayPorts gives every --gateway without a port port 20000.
func (c *agentCmd) gatewayPorts() error {
	for i, g := range c.Gateway {
		addr, err := gatewayAddr(g)
		if err != nil {
			return err
		}
		c.Gateway[i] = addr
	}
	return nil
}

// backendURL strips the scheme of a backend given as a URL: the agent
// publishes a TCP service, and the gateway speaks HTTP to it already.
// http://localhost:9000 is localhost:9000; an https:// backend is refused,
// since the agent would have to speak TLS to it.
func backendURL(s string) (string, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s, nil
	}
	switch strings.ToLower(scheme) {
	case "http":
		host, _, _ := strings.Cut(rest, "/")
		if host == "" {
			return "", fmt.Errorf("backend %q: want HOST:PORT, e.g. localhost:9000", s)
		}
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(strings.Trim(host, "[]"), "80")
		}
		return host, nil
	case "https":
		return "", fmt.Errorf("backend %q: the agent forwards TCP and does not speak TLS to its backend; "+
			"publish the backend's plain HTTP port (http://HOST:PORT or HOST:PORT), or its TLS port as TCP and let visitors speak TLS end to end", s)
	}
	return "", fmt.Errorf("backend %q: want HOST:PORT or http://HOST:PORT, e.g. localhost:9000", s)
}

// noCredentials adds what to do to the gateway's refusal of a login that
// gave no credentials at all: it asks for some.
func noCredentials(err error, cfg *diglett.Config) error {
	if !errors.Is(err, diglett.ErrUnauthorized) || cfg.Token != "" || cfg.User != "" || cfg.TokenFunc != nil {
		return err
	}
	return fmt.Errorf("%w: give one with -t/--token-file, --user/--password-file or --identity-key", err)
}

// unreachableHint adds to the error of a gateway out of reach at start
// what to check, and --retry.
func unreachableHint(err error) error {
	if !errors.Is(err, diglett.ErrGatewayUnreachable) {
		return err
	}
	return fmt.Errorf("%w\ncheck the host name, the port (the gateway's --listen, 20000 by default) and any firewall on the way; "+
		"--retry keeps trying at start instead of exiting", err)
}

// listenRetrying is diglett.Listen that, with retry, keeps trying at start
// after any error that is not fatal (an unreachable or busy gateway, a
// name still leased to another agent), with the backoff of reconnects,
// until ctx ends.
func listenRetrying(ctx context.Context, cfg diglett.Config, retry bool) (*diglett.Listener, error) {
	maxWait := cfg.MaxBackoff
	if maxWait <= 0 {
		maxWait = diglett.DefaultMaxBackoff
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for attempt := 0; ; attempt++ {
		ln, err := diglett.Listen(ctx, cfg)
		if err == nil {
			if attempt > 0 {
				log.Info("connected to the gateway after retrying", "attempts", attempt+1)
			}
			return ln, nil
		}
		err = noCredentials(err, &cfg)
		if !retry || diglett.IsFatal(err) || ctx.Err() != nil {
			return nil, unreachableHint(err)
		}
		wait := retryBackoff(attempt, maxWait)
		log.Warn("could not start, retrying (--retry)", "in", wait.Round(time.Millisecond), "attempt", attempt+1, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("stopped before the gateway could be reached: %w", err)
		}
	}
}

// retryBackoff is the reconnect loop's backoff: a random wait between 0
// and min(max, 250ms·2^attempt).
func retryBackoff(attempt int, max time.Duration) time.Duration {
	ceil := 250 * time.Millisecond << min(attempt, 16)
	if ceil > max || ceil <= 0 {
		ceil = max
	}
	return rand.N(ceil) + time.Millisecond
}

// durationMapper decodes a time.Duration flag, saying how to write one
// when the unit is missing ("60" rather than "60s").
func durationMapper() kong.MapperFunc {
	return func(ctx *kong.DecodeContext, target reflect.Value) error {
		var v any
		if err := ctx.Scan.PopValueInto("duration", &v); err != nil {
			return err
		}
		var d time.Duration
		switch v := v.(type) {
		case time.Duration:
			d = v
		case string:
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				if _, nerr := strconv.ParseFloat(v, 64); nerr == nil {
					return fmt.Errorf("%q has no unit: want a duration with a unit, such as 60s or 5m", v)
				}
				return fmt.Errorf("%q: want a duration with a unit, such as 60s or 5m", v)
			}
		default:
			return fmt.Errorf("want a duration with a unit, such as 60s or 5m, got %T", v)
		}
		target.Set(reflect.ValueOf(d))
		return nil
	}
}
