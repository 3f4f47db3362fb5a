package consensus

import (
	"bytes"
	"encoding/binary"
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
	//
	// now is the time the leader stamped into the entry when it appended it,
	// in unix nanoseconds (rule S7); proposers cannot set it. It is 0 for a
	// version 1 entry, written before entries were stamped. Within one
	// leader's tenure stamps strictly increase in log order, and a new
	// leader starts above the highest stamp it has applied, but a leader
	// whose clock is behind, or that had not applied every committed entry
	// when it was elected, can stamp below an earlier leader's entries. The
	// state machine must therefore keep its own clock monotonic (treat a
	// stamp below its latest as its latest), not trust now to be.
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
	// entryVersion1 is a command without a time stamp, written before the
	// leader stamped entries. It is still applied, with now = 0.
	entryVersion1 byte = 1
	// entryVersion2 is the leader's time stamp (unix nanoseconds, 8 bytes
	// big-endian, rule S7) followed by the command.
	entryVersion2 byte = 2
	// entryHeaderV2 is the length of a version 2 entry before its command.
	entryHeaderV2 = 1 + 8

	snapshotMagic = "p2pkey-snapshot\x00"
	snapshotV1    = 1
	// snapshotV2 adds, before the state machine's bytes, the highest leader
	// stamp applied (8 bytes, big-endian unix nanoseconds): the floor of
	// the next leader's stamps (S7), which a node restored from a snapshot
	// would otherwise not know.
	snapshotV2 = 2

	// maxSnapshotSize bounds what Restore reads.
	maxSnapshotSize = 256 << 20
)

// Errors from the FSM bridge.
var (
	ErrEntryVersion      = errors.New("consensus: unsupported log entry version")
	ErrEntryFormat       = errors.New("consensus: malformed log entry")
	ErrSnapshotFormat    = errors.New("consensus: unrecognised snapshot format")
	ErrStateMachinePanic = errors.New("consensus: state machine panicked")
)

// EncodeEntry wraps a state-machine command in the log entry envelope
// (version 2): the leader's time stamp now, in unix nanoseconds, then the
// command. Only the leader calls it, for every command it appends (rule S7).
func EncodeEntry(now int64, cmd []byte) []byte {
	b := make([]byte, entryHeaderV2, entryHeaderV2+len(cmd))
	b[0] = entryVersion2
	binary.BigEndian.PutUint64(b[1:], uint64(now))
	return append(b, cmd...)
}

// DecodeEntry opens a log entry envelope: the leader's time stamp (0 for a
// version 1 entry, which has none) and the command. An unknown version is
// ErrEntryVersion, a truncated entry ErrEntryFormat; both are deterministic,
// so every node refuses the same entries.
func DecodeEntry(data []byte) (now int64, cmd []byte, err error) {
	if len(data) == 0 {
		return 0, nil, ErrEntryFormat
	}
	switch data[0] {
	case entryVersion1:
		return 0, data[1:], nil
	case entryVersion2:
		if len(data) < entryHeaderV2 {
			return 0, nil, fmt.Errorf("%w: %d bytes, shorter than its time stamp", ErrEntryFormat, len(data))
		}
		return int64(binary.BigEndian.Uint64(data[1:])), data[entryHeaderV2:], nil
	}
	return 0, nil, fmt.Errorf("%w: %d", ErrEntryVersion, data[0])
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
	// maxStamp is the highest leader time stamp applied since start (a
	// snapshot does not carry it). The leader seeds its next stamp with it.
	maxStamp atomic.Int64
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

// StoreConfiguration implements raft.ConfigurationStore: raft calls it, on
// every server, when a configuration change commits. The state machine has
// nothing to store (the configuration is in Raft's own log and snapshots);
// it is reported like an applied command, so that whoever waits on
// AppliedChan or OnApplied for a change of voters (a joiner waiting to be
// promoted, a leave waiting to be out) wakes without polling.
func (f *fsm) StoreConfiguration(index uint64, _ raft.Configuration) {
	if f.applied != nil {
		f.applied(index)
	}
}

func (f *fsm) applyEntry(data []byte) (res []byte, err error) {
	now, cmd, err := DecodeEntry(data)
	if err != nil {
		return nil, err
	}
	if now > f.maxStamp.Load() {
		f.maxStamp.Store(now) // only the FSM goroutine stores
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: %v", ErrStateMachinePanic, r)
		}
	}()
	return f.sm.Apply(now, cmd)
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := f.sm.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{data: data, stamp: f.maxStamp.Load()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxSnapshotSize+int64(len(snapshotMagic))+10))
	if err != nil {
		return err
	}
	stamp, payload, err := decodeSnapshot(data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.sm.Restore(payload); err != nil {
		return err
	}
	if stamp > f.maxStamp.Load() {
		f.maxStamp.Store(stamp)
	}
	return nil
}

// View runs fn with the state machine locked against concurrent Apply.
func (f *fsm) View(fn func(StateMachine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.sm)
}

// decodeSnapshot reads a snapshot envelope: version 1 (no stamp) or 2.
func decodeSnapshot(data []byte) (stamp int64, payload []byte, err error) {
	rest, ok := bytes.CutPrefix(data, []byte(snapshotMagic))
	if !ok || len(rest) < 1 {
		return 0, nil, ErrSnapshotFormat
	}
	switch rest[0] {
	case snapshotV1:
		rest = rest[1:]
	case snapshotV2:
		if len(rest) < 9 {
			return 0, nil, fmt.Errorf("%w: truncated stamp", ErrSnapshotFormat)
		}
		stamp = int64(binary.BigEndian.Uint64(rest[1:9]))
		rest = rest[9:]
	default:
		return 0, nil, fmt.Errorf("%w: version %d", ErrSnapshotFormat, rest[0])
	}
	if len(rest) > maxSnapshotSize {
		return 0, nil, fmt.Errorf("%w: larger than %d bytes", ErrSnapshotFormat, maxSnapshotSize)
	}
	return stamp, rest, nil
}

type fsmSnapshot struct {
	data  []byte
	stamp int64
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	hdr := append([]byte(snapshotMagic), snapshotV2)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(s.stamp))
	_, err := sink.Write(hdr)
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
