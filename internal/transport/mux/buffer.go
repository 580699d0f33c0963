package mux

import "sync"

// Receive buffers are chains of pooled chunks of a few size classes; a
// stream holds chunks only while it has unread data.
var chunkClasses = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10}

var chunkPools [len(chunkClasses)]sync.Pool

// getChunk returns an empty chunk holding at least min(n, 64 KiB) bytes.
func getChunk(n int) *[]byte {
	i := 0
	for i < len(chunkClasses)-1 && n > chunkClasses[i] {
		i++
	}
	if p, ok := chunkPools[i].Get().(*[]byte); ok {
		*p = (*p)[:0]
		return p
	}
	b := make([]byte, 0, chunkClasses[i])
	return &b
}

func putChunk(p *[]byte) {
	c := cap(*p)
	for i, size := range chunkClasses {
		if c == size {
			*p = (*p)[:0]
			chunkPools[i].Put(p)
			return
		}
	}
}

// Pending output buffers of sessions.
const (
	outBufSize = 64 << 10
	outBufKeep = 1 << 20 // larger ones are left to the collector
)

var outPool = sync.Pool{New: func() any {
	b := make([]byte, 0, outBufSize)
	return &b
}}

func getOut() []byte { return (*outPool.Get().(*[]byte))[:0] }

func putOut(b []byte) {
	if b == nil || cap(b) > outBufKeep {
		return
	}
	b = b[:0]
	outPool.Put(&b)
}
