package mux

import "time"

// Keepalive is a timer, not a goroutine: it sends a ping once nothing
// was received for pingAfter, and ends the session when nothing at all
// arrives within the rest of MaxIdleTimeout after the ping, so a silent
// peer is noticed MaxIdleTimeout after its last frame. After an answered
// ping the next one goes out pingAfter after the last frame, not after
// the answer's deadline. Any frame received counts as life. Pings also
// measure the round-trip time the stream windows grow by; one goes out
// when the session starts.

// pingAfter is how long the session is silent before it pings: the
// period for a client; for a server half as long again, so that a client
// pinging on time keeps both ends alive and the server only pings a
// client that does not. The server's answer still has at least a period
// to come back in: with MaxIdleTimeout under three periods its ping
// comes less late, and at two periods (the least the command lines
// allow) on time.
func (s *Session) pingAfter() time.Duration {
	kap := s.cfg.KeepAlivePeriod
	if s.client {
		return kap
	}
	return kap + min(kap/2, max(0, s.cfg.MaxIdleTimeout-2*kap))
}

func (s *Session) startKeepalive() {
	s.kmu.Lock()
	s.pingID = 1
	s.pingSent = time.Now()
	if s.cfg.KeepAlivePeriod > 0 {
		s.ktimer = time.AfterFunc(s.pingAfter(), s.keepalive)
	}
	s.kmu.Unlock()
	s.sendControl(typePing, flagSYN, 0, 1, false)
}

func (s *Session) stopKeepalive() {
	s.kmu.Lock()
	if s.ktimer != nil {
		s.ktimer.Stop()
	}
	s.kstopped = true
	s.kmu.Unlock()
}

func (s *Session) keepalive() {
	kap := s.pingAfter()
	wait := s.cfg.MaxIdleTimeout - kap
	s.kmu.Lock()
	if s.kstopped {
		s.kmu.Unlock()
		return
	}
	now := time.Now()
	last := time.Unix(0, s.lastRecv.Load())
	if !s.kaPing.IsZero() {
		if !last.After(s.kaPing) {
			if since := now.Sub(s.kaPing); since < wait {
				s.ktimer.Reset(wait - since)
				s.kmu.Unlock()
				return
			}
			s.kmu.Unlock()
			s.shutdown(ErrKeepAliveTimeout, CodeNormal, false)
			return
		}
		s.kaPing = time.Time{}
	}
	silent := now.Sub(last)
	if silent < kap {
		s.ktimer.Reset(kap - silent)
		s.kmu.Unlock()
		return
	}
	s.pingID++
	id := s.pingID
	s.pingSent = now
	s.kaPing = now
	// Back at the next ping's time: answered by then, the ping is
	// forgotten and the silence since the answer counted; if not, the
	// timer runs on to the answer's deadline.
	s.ktimer.Reset(min(kap, wait))
	s.kmu.Unlock()
	s.sendControl(typePing, flagSYN, 0, id, true)
}

// pingAnswered handles the ACK of ping id.
func (s *Session) pingAnswered(id uint32) {
	s.kmu.Lock()
	if id == s.pingID && !s.pingSent.IsZero() {
		s.rtt.Store(int64(time.Since(s.pingSent)))
		s.pingSent = time.Time{}
	}
	s.kmu.Unlock()
}
