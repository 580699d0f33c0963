package certstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// heldLock is a lock this Storage holds: an etcd mutex on a session (a
// lease kept alive) of its own.
type heldLock struct {
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// Lock takes the lock name, waiting while another holder, on this node or
// another, has it, until ctx ends. A holder whose node dies frees it
// LockTTL later.
func (s *Storage) Lock(ctx context.Context, name string) error {
	return s.lock(ctx, name, true)
}

// TryLock takes the lock name if no one holds it, and reports whether it
// did, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	err := s.lock(ctx, name, false)
	if errors.Is(err, concurrency.ErrLocked) {
		return false, nil
	}
	return err == nil, err
}

func (s *Storage) lock(ctx context.Context, name string, wait bool) error {
	if name == "" {
		return errors.New("certstore: lock: empty name")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.waitCtx, cancel) // Close aborts the wait
	defer stop()

	// The lease is granted under ctx; its keep-alive lives until the
	// lock is released or the Storage closed.
	lease, err := s.client.Grant(ctx, int64(s.ttl))
	if err != nil {
		return s.lockErr(name, fmt.Errorf("grant lease: %w", err))
	}
	session, err := concurrency.NewSession(s.client,
		concurrency.WithLease(lease.ID),
		concurrency.WithTTL(s.ttl),
		concurrency.WithContext(s.sessionCtx))
	if err != nil {
		s.revoke(context.WithoutCancel(ctx), lease.ID)
		return s.lockErr(name, fmt.Errorf("keep lease alive: %w", err))
	}
	// Escaped, so that no lock's keys lie under another's prefix.
	mutex := concurrency.NewMutex(session, s.lockPrefix+url.PathEscape(name))
	if wait {
		err = mutex.Lock(ctx)
	} else {
		err = mutex.TryLock(ctx)
	}
	if err != nil {
		session.Close() // also deletes a key left behind
		if errors.Is(err, concurrency.ErrLocked) {
			return err
		}
		return s.lockErr(name, err)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		session.Close()
		return ErrClosed
	}
	s.held[name] = &heldLock{session: session, mutex: mutex}
	s.mu.Unlock()
	s.log.Debug("certificate lock taken", "lock", name, "lease", fmt.Sprintf("%x", lease.ID))
	return nil
}

// lockErr wraps err, a failure to take name, as ErrClosed when Close
// aborted it.
func (s *Storage) lockErr(name string, err error) error {
	if s.waitCtx.Err() != nil {
		return ErrClosed
	}
	return fmt.Errorf("certstore: lock %s: %w", name, err)
}

// revoke revokes a lease that no session keeps, bounded by its TTL (after
// which it has expired anyway).
func (s *Storage) revoke(ctx context.Context, id clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.ttl)*time.Second)
	defer cancel()
	_, err := s.client.Revoke(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil // expired: its keys are gone
	}
	return err
}

// Unlock releases the lock name, which this Storage must hold.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certstore: unlock %s: %w", name, ErrNotLocked)
	}
	return s.release(ctx, name, h)
}

// release deletes the lock's key and revokes its lease. When etcd cannot
// be reached the lease, no longer kept alive, expires within LockTTL.
func (s *Storage) release(ctx context.Context, name string, h *heldLock) error {
	select {
	case <-h.session.Done():
		s.log.Warn("certificate lock lost before its release: its lease expired", "lock", name)
	default:
	}
	h.session.Orphan() // from here the lease expires within LockTTL anyway
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.ttl)*time.Second)
	defer cancel()
	err := h.mutex.Unlock(ctx)
	rerr := s.revoke(ctx, h.session.Lease())
	if err != nil && rerr != nil {
		return fmt.Errorf("certstore: unlock %s: %w (it frees itself within %ds)", name, errors.Join(err, rerr), s.ttl)
	}
	s.log.Debug("certificate lock released", "lock", name)
	return nil
}

// Close aborts the Lock calls still waiting and releases the locks held.
// The etcd client stays open. Afterwards Lock and TryLock return
// ErrClosed.
func (s *Storage) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancelWait()
	s.inflight.Wait()

	s.mu.Lock()
	held := s.held
	s.held = make(map[string]*heldLock)
	s.mu.Unlock()
	var errs []error
	for name, h := range held {
		if err := s.release(context.Background(), name, h); err != nil {
			errs = append(errs, err)
		}
	}
	s.cancelSession()
	return errors.Join(errs...)
}
