package consensus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// StateMachine is the replicated state that consensus drives. Apply must be
// deterministic: the same bytes on the same state give the same result and
// the same error on every node. It must never panic, but the bridge recovers
// a panic into an error in case it does.
type StateMachine interface {
	// Apply applies one command and returns an opaque result for the caller.
	Apply(now int64, cmd []byte) ([]byte, error)
	// Snapshot returns the whole state as bytes. It is called with the bridge's
	// lock held, so no Apply runs concurrently.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot.
	Restore(snapshot []byte) error
}

// Log entries and snapshots are wrapped in this package's own versioned
// envelope (rule S6), so the framing can change without touching the state
// machine's encoding.
const (
	entryVersion1 byte = 1

	snapshotMagic = "p2pkey-snapshot\x00"
	snapshotV1    = 1

	// maxSnapshotSize bounds what Restore reads.
	maxSnapshotSize = 256 << 20
)

// Errors from the FSM bridge.
var (
	ErrEntryVersion      = errors.New("consensus: unsupported log entry version")
	ErrSnapshotFormat    = errors.New("consensus: unrecognised snapshot format")
	ErrStateMachinePanic = errors.New("consensus: state machine panicked")
)

// EncodeEntry wraps a state-machine command in the log entry envelope.
func EncodeEntry(cmd []byte) []byte {
	b := make([]byte, 0, 1+len(cmd))
	b = append(b, entryVersion1)
	return append(b, cmd...)
}

// applyResult is what the bridge returns from raft.FSM.Apply.
type applyResult struct {
	result []byte
	err    error
}

// fsm is the thin bridge from raft.FSM to a StateMachine: it unwraps the
// envelope, serialises access, and reports applied indexes.
type fsm struct {
	mu      sync.Mutex
	sm      StateMachine
	applied func(index uint64)
	// lastIndex is the index of the last command applied.
	lastIndex atomic.Uint64
}

func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return applyResult{}
	}
	res, err := f.applyEntry(l.Data)
	f.lastIndex.Store(l.Index)
	if f.applied != nil {
		f.applied(l.Index)
	}
	return applyResult{result: res, err: err}
}

func (f *fsm) applyEntry(data []byte) (res []byte, err error) {
	if len(data) == 0 || data[0] != entryVersion1 {
		return nil, ErrEntryVersion
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: %v", ErrStateMachinePanic, r)
		}
	}()
	return f.sm.Apply(0, data[1:])
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := f.sm.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{data: data}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxSnapshotSize+int64(len(snapshotMagic))+2))
	if err != nil {
		return err
	}
	payload, err := decodeSnapshot(data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sm.Restore(payload)
}

// View runs fn with the state machine locked against concurrent Apply.
func (f *fsm) View(fn func(StateMachine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.sm)
}

func decodeSnapshot(data []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(data, []byte(snapshotMagic))
	if !ok || len(rest) < 1 {
		return nil, ErrSnapshotFormat
	}
	if rest[0] != snapshotV1 {
		return nil, fmt.Errorf("%w: version %d", ErrSnapshotFormat, rest[0])
	}
	if len(rest)-1 > maxSnapshotSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrSnapshotFormat, maxSnapshotSize)
	}
	return rest[1:], nil
}

type fsmSnapshot struct{ data []byte }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	_, err := sink.Write(append([]byte(snapshotMagic), snapshotV1))
	if err == nil {
		_, err = sink.Write(s.data)
	}
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
