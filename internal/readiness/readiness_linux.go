//go:build linux

package readiness

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Poller is one epoll instance and the goroutine that waits on it. Its
// methods, and its Watches', are safe for concurrent use.
type Poller struct {
	epfd int
	evfd int // an eventfd: written by Close to end the loop
	done chan struct{}

	closeOnce sync.Once

	mu      sync.Mutex
	watches map[uint32]*Watch
	next    uint32 // the last id given; 0 is the eventfd's
	closed  bool
}

// Watch is one socket a Poller watches. Its owner parks on it when the
// socket has been quiet, and closes it before (or as) it closes the
// socket.
type Watch struct {
	p  *Poller
	rc syscall.RawConn
	id uint32

	// Under p.mu.
	gen    uint32 // the current park's number, in its events
	added  bool   // the socket is in the epoll set
	wake   func() // the parked waiter's wake; nil when nobody is parked
	closed bool
}

// New starts a poller.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("readiness: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("readiness: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("readiness: epoll_ctl: %w", err)
	}
	p := &Poller{epfd: epfd, evfd: evfd, done: make(chan struct{}), watches: make(map[uint32]*Watch)}
	go p.loop()
	return p, nil
}

// loop waits for events and starts the wake of each parked waiter whose
// socket is ready. An event carries its watch's id and the number of the
// park that armed it: one for a watch nobody is parked on (unparked or
// closed), or for an earlier park than the current one, is dropped.
func (p *Poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// EBADF or EINVAL: nothing this loop can go on with. Wake
			// every parked waiter: its goroutine reads as usual.
			p.wakeAll()
			return
		}
		for i := range events[:n] {
			id, gen := uint32(events[i].Fd), uint32(events[i].Pad)
			if id == 0 {
				p.wakeAll()
				return
			}
			p.mu.Lock()
			var f func()
			if w := p.watches[id]; w != nil && w.gen == gen {
				f, w.wake = w.wake, nil
			}
			p.mu.Unlock()
			if f != nil {
				go f()
			}
		}
	}
}

// wakeAll marks the poller closed and starts every parked waiter's wake,
// so that none is left waiting for an event that will not come.
func (p *Poller) wakeAll() {
	p.mu.Lock()
	p.closed = true
	var fs []func()
	for _, w := range p.watches {
		if w.wake != nil {
			fs = append(fs, w.wake)
			w.wake = nil
		}
	}
	p.mu.Unlock()
	for _, f := range fs {
		go f()
	}
}

// Close stops the poller. Every waiter still parked is woken (its socket
// is read as if it were ready); later Parks fail.
func (p *Poller) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		one := [8]byte{7: 1}
		if _, werr := unix.Write(p.evfd, one[:]); werr != nil {
			err = fmt.Errorf("readiness: stop: %w", werr)
			return
		}
		<-p.done
		unix.Close(p.epfd)
		unix.Close(p.evfd)
	})
	return err
}

// Watch prepares c's socket to be parked on. It adds nothing to the epoll
// set until the first Park.
func (p *Poller) Watch(c syscall.Conn) (*Watch, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("readiness: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	// Ids wrap after 2^32 watches; 0 and those in use are skipped.
	for {
		p.next++
		if _, used := p.watches[p.next]; p.next != 0 && !used {
			break
		}
	}
	w := &Watch{p: p, rc: rc, id: p.next}
	p.watches[w.id] = w
	return w, nil
}

// Park arranges for wake to be called once, on a goroutine of its own,
// when the socket can be read, has failed or was shut down by the peer
// (at once if it already is). It reports false, and will not call wake,
// when it cannot: the watch or the poller is closed, someone is parked
// already, or the socket is closed.
func (w *Watch) Park(wake func()) bool {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || w.closed || w.wake != nil {
		return false
	}
	// The wake is in place before the socket is armed: the loop takes
	// p.mu to read it, so an event that comes at once waits for it.
	w.wake = wake
	w.gen++
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd:     int32(w.id),
		Pad:    int32(w.gen),
	}
	var cerr error
	// Control holds the socket open while it runs: the descriptor is
	// this socket's, not a later one's that reused its number.
	err := w.rc.Control(func(fd uintptr) {
		op := unix.EPOLL_CTL_MOD
		if !w.added {
			op = unix.EPOLL_CTL_ADD
		}
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		if cerr == nil {
			w.added = true
		}
	})
	if err != nil || cerr != nil {
		w.wake = nil
		return false
	}
	return true
}

// Unpark cancels the last Park if its wake has not been started, and
// reports whether it did. When it reports false, a wake already started
// (or nobody was parked).
func (w *Watch) Unpark() bool {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.wake == nil {
		return false
	}
	// The socket stays armed; its event, if it comes, finds no wake.
	w.wake = nil
	return true
}

// Close stops watching the socket; a parked wake is dropped (Unpark
// first to know whether there was one). Close it before the socket, or
// as it closes: a closed socket leaves the epoll set by itself.
func (w *Watch) Close() {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	w.wake = nil
	delete(p.watches, w.id)
	if w.added && !p.closed {
		w.rc.Control(func(fd uintptr) {
			unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
}
