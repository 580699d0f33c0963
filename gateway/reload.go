package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/lazylog"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// authState is one Authenticator put in force, by Config.Auth or by
// SetAuthenticator. A session records the one it was last checked
// against: the pointer tells generations apart.
type authState struct {
	a Authenticator
}

// authenticator is the Authenticator in force.
func (s *Server) authenticator() *authState { return s.auth.Load() }

// loginState is what re-checking a session after SetAuthenticator needs.
// Its fields are guarded by mu, held by the login while it asks the
// Authenticator, so that a re-check either sees the login done or the
// login sees the new Authenticator.
type loginState struct {
	mu       sync.Mutex
	creds    Credentials // as the agent presented them, LoginTime set to the login's; never logged
	identity Identity    // as the last check returned it
	checked  *authState  // nil until logged in
	revoked  bool

	ctrl    transport.Stream // the control stream, set before the login
	writeMu sync.Mutex       // one message at a time on ctrl
}

// authenticate asks the Authenticator in force who the agent is and, if
// it is someone, records the credentials for later re-checks.
func (ss *session) authenticate(ctx context.Context, c Credentials) (Identity, error) {
	ss.login.mu.Lock()
	defer ss.login.mu.Unlock()
	st := ss.srv.authenticator()
	at := time.Now() // what the token was judged as of
	id, err := st.a.Authenticate(ctx, c)
	if err != nil {
		return Identity{}, err
	}
	c.LoginTime = at // zero at a login: the re-checks send the login's
	ss.login.creds, ss.login.identity, ss.login.checked = c, id, st
	return id, nil
}

// loginLog is the session's logger with the identity of its last check,
// for the rare lines of a re-check or a revocation. It is made when one is
// written: thousands of idle sessions need not hold one each. Called
// with ss.login.mu held.
func (ss *session) loginLog() *slog.Logger {
	return lazylog.With(ss.srv.log, "agent", ss.sess.RemoteAddr().String(), "transport", ss.via, "identity", ss.login.identity.Name)
}

// confirmName is called once t, authorized by st, has joined the session:
// if the Authenticator changed meanwhile, the name is asked for again of
// each newer one (a re-check of the session may have missed it). A name
// refused is taken from the session and the refusal returned.
func (ss *session) confirmName(st *authState, t *tunnel) *protocol.Error {
	for cur := ss.srv.authenticator(); cur != st; cur = ss.srv.authenticator() {
		st = cur
		ss.login.mu.Lock()
		id := ss.login.identity
		ss.login.mu.Unlock()
		err := st.a.Authorize(ss.srv.ctx, id, t.name)
		if errors.Is(err, ErrForbidden) {
			ss.log.Info("name refused: no longer allowed", "name", t.name, "err", err)
			ss.dropTunnel(t)
			return &protocol.Error{Code: protocol.CodeForbidden, Message: fmt.Sprintf(reasonNameFormat, t.name)}
		}
		if err != nil {
			ss.log.Warn("name kept: authorization failed after a reload", "name", t.name, "err", err)
		}
	}
	return nil
}

// dropTunnel takes t from the session's tunnels.
func (ss *session) dropTunnel(t *tunnel) {
	ss.mu.Lock()
	found := false
	for i, x := range ss.tunnels {
		if x == t {
			ss.tunnels = append(ss.tunnels[:i:i], ss.tunnels[i+1:]...)
			found = true
			break
		}
	}
	ss.mu.Unlock()
	if found {
		ss.srv.reg.leave(t, ss)
	}
}

// names lists the names the session serves, and says whether it has
// ended (left its tunnels).
func (ss *session) names() (names []string, ended bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	names = make([]string, len(ss.tunnels))
	for i, t := range ss.tunnels {
		names[i] = t.name
	}
	return names, ss.closed
}

// Recheck counts what SetAuthenticator did to the agent sessions.
type Recheck struct {
	// Kept are the sessions still allowed: their token and every name
	// they registered. They go on untouched.
	Kept int
	// Closed are the sessions refused: told why and closed.
	Closed int
	// Failed are the sessions the new Authenticator could not decide on
	// (an error that is neither ErrUnauthorized nor ErrForbidden, or ctx
	// ended): they are kept, and each is logged at Warn.
	Failed int
}

// recheckWorkers bounds the sessions re-checked at once.
const recheckWorkers = 16

// revokeGrace is how long a revoked session is left for its agent to read
// why and hang up before the gateway closes it.
const revokeGrace = time.Second

// Reasons given to agents whose sessions a new Authenticator refuses.
const (
	reasonRevoked         = "token revoked by the gateway's operator"
	reasonIdentityChanged = "token revoked by the gateway's operator (it now belongs to another identity)"
	reasonNameFormat      = "name %q is no longer allowed for this token"
)

// SetAuthenticator puts a in force in place of the Authenticator the
// server has (Config.Auth, or a previous call's), for example after its
// operator edited a tokens file. Logins from then on use a at once. Every
// agent session logged in is then checked again: a.Authenticate with the
// credentials it logged in with, and a.Authorize for each name it
// registered. A session still allowed goes on untouched: no stream is
// dropped, no byte lost. A session refused, because its token is no
// longer accepted, now belongs to another identity, or one of its names
// is no longer allowed, is sent a protocol error saying so (code
// unauthorized or forbidden, which the agent takes as final), stops
// getting visitors at once, and is closed once its agent hangs up, a
// second later at most. A session that loses one of several names is
// closed whole: the agent then exits with the reason rather than serve
// part of what it was asked to. Its names stay leased to their identity
// (Config.Lease), as after any disconnect.
//
// An error from a that is neither ErrUnauthorized nor ErrForbidden is
// taken as a failure of a, not a refusal: the session is kept and logged
// at Warn. Each call to a has ctx, bounded by Config.HandshakeTimeout;
// sessions are checked a few at a time, and SetAuthenticator returns once
// every one was. Calls are serialized; the outcome of each session is
// logged at Info (closed) or Debug (kept).
func (s *Server) SetAuthenticator(ctx context.Context, a Authenticator) (Recheck, error) {
	if a == nil {
		return Recheck{}, errors.New("gateway: no authenticator")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	st := &authState{a: a}
	s.auth.Store(st)

	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()

	var (
		mu  sync.Mutex
		res Recheck
		wg  sync.WaitGroup
		ch  = make(chan *session)
	)
	for range min(recheckWorkers, len(sessions)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ss := range ch {
				o := ss.recheck(ctx, st)
				mu.Lock()
				switch o {
				case recheckKept:
					res.Kept++
				case recheckClosed:
					res.Closed++
				case recheckFailed:
					res.Failed++
				}
				mu.Unlock()
			}
		}()
	}
	for _, ss := range sessions {
		ch <- ss
	}
	close(ch)
	wg.Wait()
	return res, nil
}

// Recheck checks every agent session again against the Authenticator in
// force, as SetAuthenticator does with a new one: call it when the
// Authenticator's answers changed on their own (a registry it watches
// said a name has a new owner, say). Sessions still allowed go on
// untouched; the others are told why and closed.
func (s *Server) Recheck(ctx context.Context) (Recheck, error) {
	return s.SetAuthenticator(ctx, s.authenticator().a)
}

type recheckOutcome int

const (
	recheckSkipped recheckOutcome = iota // not logged in, or already done
	recheckKept
	recheckClosed
	recheckFailed
)

// recheck checks the session against st, unless it was already or is not
// logged in (a login in progress uses st itself).
func (ss *session) recheck(ctx context.Context, st *authState) recheckOutcome {
	lg := &ss.login
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if lg.checked == nil || lg.checked == st || lg.revoked {
		return recheckSkipped
	}
	ctx, cancel := context.WithTimeout(ctx, ss.srv.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ss.srv.ctx, cancel)
	defer stop()

	id, err := st.a.Authenticate(ctx, lg.creds)
	switch {
	case errors.Is(err, ErrUnauthorized):
		ss.revoke(protocol.CodeUnauthorized, reasonRevoked, err)
		return recheckClosed
	case err != nil:
		ss.loginLog().Warn("agent kept: the new authenticator failed on its token", "err", err)
		return recheckFailed
	case id.Name != lg.identity.Name:
		ss.revoke(protocol.CodeUnauthorized, reasonIdentityChanged, fmt.Errorf("identity now %q", id.Name))
		return recheckClosed
	}
	names, ended := ss.names()
	if ended {
		// The session ended while it was checked (its agent left): it
		// has no names left to judge, and it is not kept.
		return recheckSkipped
	}
	failed := false
	for _, name := range names {
		err := st.a.Authorize(ctx, id, name)
		switch {
		case errors.Is(err, ErrForbidden):
			ss.revoke(protocol.CodeForbidden, fmt.Sprintf(reasonNameFormat, name), err)
			return recheckClosed
		case err != nil:
			ss.loginLog().Warn("agent kept: the new authenticator failed on its name", "name", name, "err", err)
			failed = true
		}
	}
	if failed {
		return recheckFailed
	}
	lg.identity, lg.checked = id, st
	ss.loginLog().Debug("agent still allowed after the authenticator changed")
	return recheckKept
}

// revoke ends a session refused by a new Authenticator: it gets no more
// visitors, its agent is told why on the control stream, and the session
// is closed once the agent hangs up, revokeGrace later at most. Called
// with ss.login.mu held; err is the Authenticator's, for the log.
func (ss *session) revoke(code protocol.Code, reason string, err error) {
	ss.login.revoked = true
	ss.loginLog().Info("agent session closed: the new authenticator refuses it", "reason", reason, "err", err)
	ss.leave()
	t := time.AfterFunc(revokeGrace, func() { ss.sess.CloseWithError(transport.CodeNone, reason) })
	context.AfterFunc(ss.sess.Context(), func() { t.Stop() })
	// Bounded: the timer closes the session, which ends the write.
	ss.reply(ss.login.ctrl, &protocol.Error{Code: code, Message: reason})
}
