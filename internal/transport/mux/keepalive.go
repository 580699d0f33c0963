package mux

import "time"

// Keepalive is a timer, not a goroutine: it fires after KeepAlivePeriod,
// sends a ping when nothing was received for that long, and ends the
// session when nothing at all arrives within MaxIdleTimeout-KeepAlivePeriod
// after the ping. Any frame received counts as life. Pings also measure
// the round-trip time the stream windows grow by; one goes out when the
// session starts.

func (s *Session) startKeepalive() {
	s.kmu.Lock()
	s.pingID = 1
	s.pingSent = time.Now()
	if s.cfg.KeepAlivePeriod > 0 {
		s.ktimer = time.AfterFunc(s.cfg.KeepAlivePeriod, s.keepalive)
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
	kap := s.cfg.KeepAlivePeriod
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
	s.ktimer.Reset(wait)
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
