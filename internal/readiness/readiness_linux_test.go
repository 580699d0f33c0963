//go:build linux

package readiness

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/diglett/diglett/internal/testutil"
)

const (
	// quiet is how long a negative check waits for a wake that must
	// not come.
	quiet = 100 * time.Millisecond
	// timeout bounds every wait for something that must happen.
	timeout = 5 * time.Second
)

// newPoller starts a poller closed at the end of the test, which then
// checks that no goroutine of this package (the loop, a wake) is left.
func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Poller.Close: %v", err)
		}
		checkNoGoroutines(t)
	})
	return p
}

// ownGoroutines counts the goroutines running this package's code (the
// poller loop, a wake started by it), the tests' own goroutines aside.
func ownGoroutines() int {
	return testutil.GoroutinesIn("internal/readiness.", "testing.tRunner")
}

func checkNoGoroutines(t *testing.T) {
	t.Helper()
	err := testutil.Poll(timeout, func() error {
		if n := ownGoroutines(); n != 0 {
			return fmt.Errorf("%d goroutines of the readiness package are left after Poller.Close", n)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func watch(t *testing.T, p *Poller, c *net.TCPConn) *Watch {
	t.Helper()
	w, err := p.Watch(c)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	t.Cleanup(w.Close)
	return w
}

// waker counts the calls of its wake and signals each on ch.
type waker struct {
	n  atomic.Int32
	ch chan struct{}
}

func newWaker() *waker { return &waker{ch: make(chan struct{}, 1)} }

func (k *waker) wake() {
	k.n.Add(1)
	select {
	case k.ch <- struct{}{}:
	default:
	}
}

func park(t *testing.T, w *Watch, k *waker) {
	t.Helper()
	if !w.Park(k.wake) {
		t.Fatal("Park reported false on an open watch of an open socket")
	}
}

// waitWake fails t unless k's wake is called within timeout.
func waitWake(t *testing.T, k *waker, what string) {
	t.Helper()
	select {
	case <-k.ch:
	case <-time.After(timeout):
		t.Fatalf("%s: wake not called within %v", what, timeout)
	}
}

// noWake fails t if k's wake is called within quiet.
func noWake(t *testing.T, k *waker, what string) {
	t.Helper()
	select {
	case <-k.ch:
		t.Fatalf("%s: wake called (%d calls)", what, k.n.Load())
	case <-time.After(quiet):
	}
}

// wokenOnce fails t unless k's wake was called exactly once, after
// waiting quiet for a second call.
func wokenOnce(t *testing.T, k *waker, what string) {
	t.Helper()
	noWake(t, k, what+": second wake")
	if n := k.n.Load(); n != 1 {
		t.Fatalf("%s: wake called %d times, want 1", what, n)
	}
}

func write(t *testing.T, c net.Conn, b byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{b}); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readByte reads one byte of c, which must be there (or come) within
// timeout.
func readByte(t *testing.T, c net.Conn, want byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("read after wake: %v", err)
	}
	if b[0] != want {
		t.Fatalf("read %q, want %q", b[0], want)
	}
}

func TestParkWakesOnData(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	park(t, w, k)
	noWake(t, k, "quiet socket")

	write(t, peer, 'x')
	waitWake(t, k, "data from the peer")
	wokenOnce(t, k, "data from the peer")
	// Park must leave the data to the reader.
	readByte(t, c, 'x')
}

func TestParkWhenAlreadyReadable(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	write(t, peer, 'x')
	// Wait for the byte to be in c's receive buffer (without reading
	// it) so that the socket is readable before Park.
	if err := testutil.Poll(timeout, func() error { return readable(c) }); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	park(t, w, k)
	waitWake(t, k, "data pending before Park")
	if d := time.Since(start); d > time.Second {
		t.Errorf("wake for pending data took %v", d)
	}
	wokenOnce(t, k, "data pending before Park")
	readByte(t, c, 'x')
}

// readable reports whether c's socket has data (or an end) to read now,
// without reading it.
func readable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, perr = unix.Poll(fds, 0)
	}); err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	if n == 0 {
		return errors.New("socket not readable yet")
	}
	return nil
}

func TestParkWakesOnPeerClose(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	park(t, w, k)
	noWake(t, k, "quiet socket")
	if err := peer.Close(); err != nil {
		t.Fatal(err)
	}
	waitWake(t, k, "peer closed")
	wokenOnce(t, k, "peer closed")
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want EOF", err)
	}
}

func TestParkWakesOnPeerHalfClose(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	park(t, w, k)
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitWake(t, k, "peer shut down its writing side")
	wokenOnce(t, k, "peer shut down its writing side")
}

func TestParkWakesOnPeerReset(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	park(t, w, k)
	noWake(t, k, "quiet socket")
	if err := peer.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := peer.Close(); err != nil {
		t.Fatal(err)
	}
	waitWake(t, k, "peer reset")
	wokenOnce(t, k, "peer reset")
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("read after the peer reset: %v, want a reset error", err)
	}
}

func TestUnpark(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	if w.Unpark() {
		t.Fatal("Unpark with nobody parked reported true")
	}
	park(t, w, k)
	if !w.Unpark() {
		t.Fatal("Unpark of a parked watch on a quiet socket reported false")
	}
	write(t, peer, 'x')
	noWake(t, k, "data after Unpark")
	if w.Unpark() {
		t.Fatal("second Unpark reported true")
	}

	// The socket is readable still: a new Park wakes at once.
	k2 := newWaker()
	park(t, w, k2)
	waitWake(t, k2, "Park again after Unpark, data pending")
	wokenOnce(t, k2, "Park again after Unpark, data pending")
	if n := k.n.Load(); n != 0 {
		t.Fatalf("the unparked wake was called %d times", n)
	}
	if w.Unpark() {
		t.Fatal("Unpark after the wake was started reported true")
	}
	readByte(t, c, 'x')
}

func TestParkTwiceFails(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k1, k2 := newWaker(), newWaker()

	park(t, w, k1)
	if w.Park(k2.wake) {
		t.Fatal("second Park while parked reported true")
	}
	write(t, peer, 'x')
	waitWake(t, k1, "first Park")
	wokenOnce(t, k1, "first Park")
	if n := k2.n.Load(); n != 0 {
		t.Fatalf("the refused Park's wake was called %d times", n)
	}
}

func TestWatchCloseDropsWake(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	park(t, w, k)
	w.Close()
	write(t, peer, 'x')
	noWake(t, k, "data after Watch.Close")
	if w.Park(k.wake) {
		t.Fatal("Park on a closed watch reported true")
	}
	if w.Unpark() {
		t.Fatal("Unpark on a closed watch reported true")
	}
	w.Close() // a second Close does nothing
	noWake(t, k, "Park on a closed watch")
}

func TestParkAfterSocketClosed(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Park(k.wake) {
		t.Fatal("Park on a closed socket reported true")
	}
	if w.Unpark() {
		t.Fatal("Unpark after a refused Park reported true")
	}
	peer.Write([]byte{'x'})
	noWake(t, k, "Park on a closed socket")
}

// A socket parked once, then closed (after its watch), then parked on
// through a new watch: the number of the first descriptor, reused by a
// later socket, is not mixed up with it.
func TestParkAfterReparkedSocketClosed(t *testing.T) {
	p := newPoller(t)
	c1, peer1 := testutil.LoopbackPair(t)
	w1 := watch(t, p, c1)
	k1 := newWaker()
	park(t, w1, k1)
	if !w1.Unpark() {
		t.Fatal("Unpark reported false")
	}
	w1.Close()
	c1.Close()
	peer1.Close()

	c2, peer2 := testutil.LoopbackPair(t)
	w2 := watch(t, p, c2)
	k2 := newWaker()
	park(t, w2, k2)
	noWake(t, k2, "quiet new socket")
	write(t, peer2, 'y')
	waitWake(t, k2, "data on the new socket")
	wokenOnce(t, k2, "data on the new socket")
	if n := k1.n.Load(); n != 0 {
		t.Fatalf("the closed watch's wake was called %d times", n)
	}
}

func TestPollerCloseWakesParked(t *testing.T) {
	p := newPoller(t)
	const n = 5
	ws := make([]*Watch, n)
	ks := make([]*waker, n)
	for i := range n {
		c, _ := testutil.LoopbackPair(t)
		ws[i] = watch(t, p, c)
		ks[i] = newWaker()
		park(t, ws[i], ks[i])
	}
	// One watch unparked, one never parked: neither is woken.
	cu, _ := testutil.LoopbackPair(t)
	wu := watch(t, p, cu)
	ku := newWaker()
	park(t, wu, ku)
	if !wu.Unpark() {
		t.Fatal("Unpark reported false")
	}
	cn, _ := testutil.LoopbackPair(t)
	wn := watch(t, p, cn)

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Poller.Close: %v", err)
		}
	case <-time.After(timeout):
		t.Fatalf("Poller.Close did not return within %v", timeout)
	}
	for i, k := range ks {
		waitWake(t, k, fmt.Sprintf("watch %d parked at Poller.Close", i))
	}
	for i, k := range ks {
		if i == 0 {
			noWake(t, k, "second wake after Poller.Close")
		}
		if got := k.n.Load(); got != 1 {
			t.Errorf("watch %d: wake called %d times, want 1", i, got)
		}
	}
	if got := ku.n.Load(); got != 0 {
		t.Errorf("unparked watch woken %d times by Poller.Close", got)
	}

	if err := p.Close(); err != nil {
		t.Errorf("second Poller.Close: %v", err)
	}
	k := newWaker()
	if ws[0].Park(k.wake) {
		t.Error("Park after Poller.Close reported true")
	}
	if wn.Park(k.wake) {
		t.Error("Park of a never parked watch after Poller.Close reported true")
	}
	c, _ := testutil.LoopbackPair(t)
	if w, err := p.Watch(c); !errors.Is(err, ErrClosed) {
		t.Errorf("Watch after Poller.Close: %v, %v; want ErrClosed", w, err)
	}
	noWake(t, k, "Park after Poller.Close")
	// Closing the watches afterwards is harmless.
	for _, w := range ws {
		w.Close()
	}
	wn.Close()
}

func TestManyWatches(t *testing.T) {
	p := newPoller(t)
	const n = 200
	type pair struct {
		c, peer *net.TCPConn
		w       *Watch
		n       atomic.Int32
	}
	pairs := make([]*pair, n)
	woken := make(chan int, n)
	for i := range pairs {
		c, peer := testutil.LoopbackPair(t)
		pairs[i] = &pair{c: c, peer: peer, w: watch(t, p, c)}
	}
	for i, pr := range pairs {
		if !pr.w.Park(func() {
			pr.n.Add(1)
			woken <- i
		}) {
			t.Fatalf("Park %d reported false", i)
		}
	}
	for _, i := range rand.Perm(n) {
		write(t, pairs[i].peer, byte(i))
	}
	deadline := time.After(10 * time.Second)
	seen := make([]bool, n)
	for range n {
		select {
		case i := <-woken:
			seen[i] = true
		case <-deadline:
			var missing []int
			for i, s := range seen {
				if !s {
					missing = append(missing, i)
				}
			}
			t.Fatalf("%d of %d watches not woken within 10s: %v", len(missing), n, missing)
		}
	}
	select {
	case i := <-woken:
		t.Fatalf("watch %d woken twice", i)
	case <-time.After(quiet):
	}
	for i, pr := range pairs {
		if got := pr.n.Load(); got != 1 {
			t.Errorf("watch %d: wake called %d times, want 1", i, got)
		}
		readByte(t, pr.c, byte(i))
	}
}

// Parked sockets cost no goroutine.
func TestParkedSocketsHoldNoGoroutine(t *testing.T) {
	p := newPoller(t)
	const n = 100
	ws := make([]*Watch, n)
	ks := make([]*waker, n)
	for i := range ws {
		c, _ := testutil.LoopbackPair(t)
		ws[i] = watch(t, p, c)
		ks[i] = newWaker()
	}
	before := runtime.NumGoroutine()
	ownBefore := ownGoroutines()
	for i, w := range ws {
		park(t, w, ks[i])
	}
	after := runtime.NumGoroutine()
	ownAfter := ownGoroutines()
	if after-before >= 5 {
		t.Errorf("parking %d sockets: goroutines %d -> %d", n, before, after)
	}
	if ownAfter != ownBefore {
		t.Errorf("parking %d sockets: readiness goroutines %d -> %d", n, ownBefore, ownAfter)
	}
	if ownBefore != 1 {
		t.Errorf("%d readiness goroutines for one poller, want 1 (its loop)", ownBefore)
	}
	for i, k := range ks {
		if got := k.n.Load(); got != 0 {
			t.Errorf("quiet socket %d woken %d times", i, got)
		}
	}
}

func TestReparkLoop(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()
	const rounds = 50
	for i := range rounds {
		park(t, w, k)
		if got := k.n.Load(); got != int32(i) {
			t.Fatalf("round %d: %d wakes before the data, want %d", i, got, i)
		}
		write(t, peer, byte(i))
		waitWake(t, k, fmt.Sprintf("round %d", i))
		if got := k.n.Load(); got != int32(i+1) {
			t.Fatalf("round %d: %d wakes, want %d", i, got, i+1)
		}
		readByte(t, c, byte(i))
	}
	// Parked on a drained socket: no wake.
	park(t, w, k)
	noWake(t, k, "drained socket after the loop")
	if got := k.n.Load(); got != rounds {
		t.Fatalf("%d wakes, want %d", got, rounds)
	}
}

// A wake runs on a goroutine of its own: one that blocks holds back
// neither the poller nor other wakes, nor Poller.Close.
func TestWakeRunsOnItsOwnGoroutine(t *testing.T) {
	p := newPoller(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the poller's leak check
	c1, peer1 := testutil.LoopbackPair(t)
	c2, peer2 := testutil.LoopbackPair(t)
	w1, w2 := watch(t, p, c1), watch(t, p, c2)

	blocked := make(chan struct{})
	if !w1.Park(func() {
		close(blocked)
		<-release
	}) {
		t.Fatal("Park reported false")
	}
	k2 := newWaker()
	park(t, w2, k2)
	write(t, peer1, 'a')
	select {
	case <-blocked:
	case <-time.After(timeout):
		t.Fatal("first wake not called")
	}
	write(t, peer2, 'b')
	waitWake(t, k2, "second socket while the first wake blocks")
	wokenOnce(t, k2, "second socket while the first wake blocks")

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case <-closed:
	case <-time.After(timeout):
		t.Fatal("Poller.Close waits for a blocked wake")
	}
}

// A wake may park again on its own watch: it is not called with a lock
// held.
func TestParkFromWake(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	k := newWaker()
	reparked := make(chan bool, 1)
	if !w.Park(func() { reparked <- w.Park(k.wake) }) {
		t.Fatal("Park reported false")
	}
	write(t, peer, 'x')
	select {
	case ok := <-reparked:
		if !ok {
			t.Fatal("Park from inside the wake reported false")
		}
	case <-time.After(timeout):
		t.Fatal("first wake not called, or Park from inside it deadlocked")
	}
	// The byte is unread: the new Park wakes at once.
	waitWake(t, k, "Park from inside the wake, data pending")
	wokenOnce(t, k, "Park from inside the wake, data pending")
}

// Park, Unpark and the socket's readiness race: for each park, exactly
// one of a true Unpark and a wake happens.
func TestUnparkRacesWake(t *testing.T) {
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)
	var wakes atomic.Int32
	woken := make(chan struct{}, 1)
	wake := func() {
		wakes.Add(1)
		woken <- struct{}{}
	}
	const rounds = 300
	unparked := 0
	for i := range rounds {
		if !w.Park(wake) {
			t.Fatalf("round %d: Park reported false", i)
		}
		write(t, peer, byte(i))
		if i%3 == 0 {
			runtime.Gosched()
		}
		if w.Unpark() {
			unparked++
		} else {
			select {
			case <-woken:
			case <-time.After(timeout):
				t.Fatalf("round %d: Unpark reported false but no wake came", i)
			}
		}
		readByte(t, c, byte(i))
	}
	select {
	case <-woken:
		t.Fatal("a wake came after its Unpark reported true")
	case <-time.After(quiet):
	}
	if got := int(wakes.Load()); got+unparked != rounds {
		t.Fatalf("%d wakes + %d true Unparks, want %d parks", got, unparked, rounds)
	}
	t.Logf("%d of %d parks unparked, %d woken", unparked, rounds, wakes.Load())
}

func TestPollerCloseLeavesNoGoroutine(t *testing.T) {
	before := ownGoroutines()
	if before != 0 {
		t.Fatalf("%d readiness goroutines before the test", before)
	}
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if n := ownGoroutines(); n != 1 {
		t.Errorf("%d readiness goroutines with one poller, want 1", n)
	}
	var ks []*waker
	for range 10 {
		c, _ := testutil.LoopbackPair(t)
		w, err := p.Watch(c)
		if err != nil {
			t.Fatal(err)
		}
		k := newWaker()
		ks = append(ks, k)
		if !w.Park(k.wake) {
			t.Fatal("Park reported false")
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for i, k := range ks {
		waitWake(t, k, fmt.Sprintf("watch %d at Poller.Close", i))
	}
	checkNoGoroutines(t)
}

// After a true Unpark, the park is over: the event its arming brings, if
// the loop has it already, must not wake the next Park of the watch while
// the socket has nothing to read (the loop's comment says such a stale
// event is dropped). On one P, the loop often has the event in hand
// (EpollWait returned, p.mu not yet taken) when Unpark, the read of the
// data and the next Park run: the park's number in the event tells the
// loop it is stale.
func TestNoWakeFromStaleEvent(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	p := newPoller(t)
	c, peer := testutil.LoopbackPair(t)
	w := watch(t, p, c)

	var round, spurious, firstSpurious atomic.Int32
	firstSpurious.Store(-1)
	woken := make(chan struct{}, 1)
	wake := func() {
		// Each round's byte is read only after its wake, or after a
		// true Unpark: a wake that finds nothing to read was started
		// by an event of an earlier park.
		if readable(c) != nil {
			spurious.Add(1)
			firstSpurious.CompareAndSwap(-1, round.Load())
		}
		woken <- struct{}{}
	}
	const rounds = 3000
	unparked := 0
	for i := range rounds {
		round.Store(int32(i))
		if !w.Park(wake) {
			t.Fatalf("round %d: Park reported false", i)
		}
		runtime.Gosched() // let the loop run
		write(t, peer, byte(i))
		if w.Unpark() {
			unparked++
		} else {
			select {
			case <-woken:
			case <-time.After(timeout):
				t.Fatalf("round %d: Unpark reported false but no wake came", i)
			}
		}
		readByte(t, c, byte(i))
	}
	if n := spurious.Load(); n != 0 {
		t.Fatalf("%d of %d wakes (first in round %d) found nothing to read: "+
			"an event of an earlier, unparked, park woke a later Park (%d true Unparks)",
			n, rounds-unparked, firstSpurious.Load(), unparked)
	}
}
