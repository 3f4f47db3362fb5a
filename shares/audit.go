package shares

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
)

// EventKind says what a holder did with an envelope.
type EventKind string

// The events a holder records (see Event).
const (
	// EventStored: a push was stored and its receipt sent.
	EventStored EventKind = "stored"
	// EventServed: a fetch is answered with the owner's envelope (recorded
	// just before the answer is sent; the stream may still fail).
	EventServed EventKind = "served"
	// EventRefused: a request was refused or could not be read; Reason is
	// the refusal's wire code.
	EventRefused EventKind = "refused"
	// EventDeleted: an envelope was deleted from the store (and erased
	// from its file); Reason says which call deleted it.
	EventDeleted EventKind = "deleted"
)

// Reasons of EventDeleted: which Store call deleted the envelope.
const (
	// DeletedGeneration: Store.DeleteGeneration, an aborted or retired
	// generation (rules G3, G4).
	DeletedGeneration = "GENERATION"
	// DeletedOwner: Store.DeleteOwner, a removed owner (rule R1).
	DeletedOwner = "OWNER"
	// DeletedKeys: Store.Delete or Store.DeleteKeys, named envelopes (for
	// example those of a lapsed owner).
	DeletedKeys = "KEYS"
	// DeletedReplaced: Store.Replace, or a push that the SplitDecision let
	// replace the stored envelope with one of another split. Split is the
	// split of the envelope that went.
	DeletedReplaced = "REPLACED"
)

// Event is one thing a holder did with an envelope: what the INFO log line,
// the audit log and an Observer are told. It never holds share bytes, an
// envelope, or key material.
type Event struct {
	// Time is when the holder acted, in UTC.
	Time time.Time
	// Kind is what it did.
	Kind EventKind
	// Op is the request: "push", "fetch", or "unknown" for a request that
	// could not be read. Empty for EventDeleted.
	Op string
	// Owner is the envelope's owner. For a request it is the
	// authenticated remote peer: nobody can push or fetch another owner's
	// envelope.
	Owner peer.ID
	// Holder is this node.
	Holder peer.ID
	// Generation is the request's or the envelope's generation (0 for a
	// request that could not be read).
	Generation uint64
	// Split is the envelope's split, zero when no envelope was read (most
	// refusals).
	Split generations.SplitID
	// Reason is a stable code: the wire code of a refusal
	// (pb.Response_Code's name, for example "OWNER_REMOVED"), a Deleted*
	// constant for a deletion, or empty.
	Reason string
	// Remote is the peer on the other end of the stream, this node itself
	// for its own envelopes (Push to and Fetch from itself, which use no
	// stream); empty for a deletion.
	Remote peer.ID
}

// eventJSON is Event's line in the audit log.
type eventJSON struct {
	Time       time.Time `json:"time"`
	Event      EventKind `json:"event"`
	Op         string    `json:"op,omitempty"`
	Owner      string    `json:"owner,omitempty"`
	Holder     string    `json:"holder,omitempty"`
	Generation uint64    `json:"generation"`
	Split      string    `json:"split,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Remote     string    `json:"remote,omitempty"`
}

// MarshalJSON encodes e as one audit log record: peer IDs in their usual
// text form, the split in hex (omitted when zero), the time in RFC 3339.
func (e Event) MarshalJSON() ([]byte, error) {
	j := eventJSON{
		Time: e.Time.UTC(), Event: e.Kind, Op: e.Op, Generation: e.Generation,
		Reason: e.Reason,
	}
	if e.Owner != "" {
		j.Owner = e.Owner.String()
	}
	if e.Holder != "" {
		j.Holder = e.Holder.String()
	}
	if e.Remote != "" {
		j.Remote = e.Remote.String()
	}
	if e.Split != (generations.SplitID{}) {
		j.Split = hex.EncodeToString(e.Split[:])
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes one audit log record.
func (e *Event) UnmarshalJSON(b []byte) error {
	var j eventJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	out := Event{Time: j.Time, Kind: j.Event, Op: j.Op, Generation: j.Generation, Reason: j.Reason}
	for _, f := range []struct {
		s   string
		dst *peer.ID
	}{{j.Owner, &out.Owner}, {j.Holder, &out.Holder}, {j.Remote, &out.Remote}} {
		if f.s == "" {
			continue
		}
		id, err := peer.Decode(f.s)
		if err != nil {
			return fmt.Errorf("peer ID %q: %w", f.s, err)
		}
		*f.dst = id
	}
	if j.Split != "" {
		raw, err := hex.DecodeString(j.Split)
		if err != nil || len(raw) != len(out.Split) {
			return fmt.Errorf("split %q: want %d bytes of hex", j.Split, len(out.Split))
		}
		copy(out.Split[:], raw)
	}
	*e = out
	return nil
}

// Defaults of AuditOptions.
const (
	// DefaultAuditMaxSize is the size past which the audit log is rotated.
	// A record is about 300 bytes, so this is some 14,000 records a file.
	DefaultAuditMaxSize = 4 << 20
	// DefaultAuditKeep is how many rotated files are kept.
	DefaultAuditKeep = 4
)

// auditSyncDelay is how long after a write the audit file is fsynced.
const auditSyncDelay = time.Second

// AuditOptions tune an AuditLog; zero fields take the defaults.
type AuditOptions struct {
	// MaxSize is the size in bytes past which the file is rotated
	// (DefaultAuditMaxSize).
	MaxSize int64
	// Keep is how many rotated files are kept, PATH.1 (the newest) to
	// PATH.Keep (the oldest) (DefaultAuditKeep).
	Keep int
}

// AuditLog is the holder's append-only record of share releases: one JSON
// line per Event (see Event.MarshalJSON), in a file of mode 0600. It holds
// owners, holders, generations, splits, reasons, times and remote peers,
// never share bytes or keys.
//
// Each record is written with one write(2) to a file opened O_APPEND, so a
// record is in the file (the page cache) when Append returns and survives
// the process crashing; the file is fsynced within a second of a write, at
// each rotation and on Close, so a machine crash loses at most the last
// second. When a write would take the file past MaxSize it is rotated
// first: PATH.N-1 becomes PATH.N (the oldest, PATH.Keep, is dropped), PATH
// becomes PATH.1, and a new PATH is started. ReadAuditLog reads them back,
// oldest first. An AuditLog is safe for concurrent use; one process should
// write a given path.
type AuditLog struct {
	path    string
	maxSize int64
	keep    int

	mu     sync.Mutex
	closed bool
	f      *os.File // nil once closed, or after a failed rotation
	size   int64
	dirty  bool        // written since the last fsync
	timer  *time.Timer // the pending fsync, if any
}

// OpenAuditLog opens (creating it if needed, mode 0600) the audit log at
// path, whose directory must exist. An existing file is appended to, and
// its mode tightened to 0600.
func OpenAuditLog(path string, opts AuditOptions) (*AuditLog, error) {
	if opts.MaxSize == 0 {
		opts.MaxSize = DefaultAuditMaxSize
	}
	if opts.Keep == 0 {
		opts.Keep = DefaultAuditKeep
	}
	if opts.MaxSize < 0 || opts.Keep < 1 {
		return nil, fmt.Errorf("shares: audit log: max size %d and keep %d must be positive", opts.MaxSize, opts.Keep)
	}
	a := &AuditLog{path: path, maxSize: opts.MaxSize, keep: opts.Keep}
	if err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

// open opens a.path for appending; mu is held or a is not shared yet.
func (a *AuditLog) open() error {
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("shares: open audit log: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && fi.Mode().Perm() != 0o600 {
		err = f.Chmod(0o600)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("shares: open audit log: %w", err)
	}
	a.f, a.size = f, fi.Size()
	return nil
}

// Path is the file the log writes to.
func (a *AuditLog) Path() string { return a.path }

// Append writes e as one line, rotating the file first if the line would
// take it past MaxSize. It returns ErrClosed after Close.
func (a *AuditLog) Append(e Event) error {
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("shares: audit record: %w", err)
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if a.f == nil {
		// A rotation failed and could not reopen the file: try again.
		if err := a.open(); err != nil {
			return err
		}
	}
	if a.size > 0 && a.size+int64(len(line)) > a.maxSize {
		if err := a.rotate(); err != nil {
			return err
		}
	}
	n, err := a.f.Write(line)
	a.size += int64(n)
	if err != nil {
		return fmt.Errorf("shares: write audit log: %w", err)
	}
	a.dirty = true
	if a.timer == nil {
		a.timer = time.AfterFunc(auditSyncDelay, a.syncLater)
	}
	return nil
}

// syncLater is the delayed fsync after a write.
func (a *AuditLog) syncLater() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.timer = nil
	if a.f != nil && a.dirty {
		if err := a.f.Sync(); err == nil {
			a.dirty = false
		}
	}
}

// rotate shifts the files by one and opens a fresh one; mu is held.
func (a *AuditLog) rotate() error {
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("shares: rotate audit log: %w", err)
	}
	a.dirty = false
	if err := a.f.Close(); err != nil {
		return fmt.Errorf("shares: rotate audit log: %w", err)
	}
	a.f = nil
	for i := a.keep; i >= 1; i-- {
		from := a.path
		if i > 1 {
			from = rotatedName(a.path, i-1)
		}
		if err := os.Rename(from, rotatedName(a.path, i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return a.reopenAfter(err)
		}
	}
	if err := syncDir(filepath.Dir(a.path)); err != nil {
		return a.reopenAfter(err)
	}
	if err := a.open(); err != nil {
		return err
	}
	return nil
}

// reopenAfter reopens the log after a failed rotation, so later appends
// still land somewhere, and returns the rotation's error.
func (a *AuditLog) reopenAfter(err error) error {
	if oerr := a.open(); oerr != nil {
		return fmt.Errorf("shares: rotate audit log: %w (and reopen: %w)", err, oerr)
	}
	return fmt.Errorf("shares: rotate audit log: %w", err)
}

func rotatedName(path string, i int) string { return path + "." + strconv.Itoa(i) }

// Close fsyncs and closes the file. Later Appends return ErrClosed.
func (a *AuditLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if a.f == nil {
		return nil
	}
	serr := a.f.Sync()
	cerr := a.f.Close()
	a.f = nil
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("shares: close audit log: %w", err)
	}
	return nil
}

// ReadAuditLog calls fn with every record of the audit log at path, oldest
// first: the rotated files from the highest number down to PATH.1, then
// PATH. A missing log has no records. A last line without its newline (a
// write in progress, or cut short by a crash) is skipped; any other line
// that does not decode is an error naming the file and line. An error from
// fn stops the reading and is returned. Reading while the log is being
// rotated may see a record twice or miss one.
func ReadAuditLog(path string, fn func(Event) error) error {
	files, err := auditFiles(path)
	if err != nil {
		return err
	}
	for _, name := range files {
		if err := readAuditFile(name, fn); err != nil {
			return err
		}
	}
	return nil
}

// auditFiles lists the files of the log at path, oldest first.
func auditFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("shares: read audit log: %w", err)
	}
	var nums []int
	current := false
	for _, e := range entries {
		name := e.Name()
		if name == base {
			current = true
			continue
		}
		suffix, ok := strings.CutPrefix(name, base+".")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(suffix); err == nil && n > 0 && strconv.Itoa(n) == suffix {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	var files []string
	for _, n := range slices.Backward(nums) {
		files = append(files, rotatedName(path, n))
	}
	if current {
		files = append(files, path)
	}
	return files, nil
}

func readAuditFile(name string, fn func(Event) error) error {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // rotated away since it was listed
		}
		return fmt.Errorf("shares: read audit log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return nil // a last line without its newline is incomplete
		}
		if err != nil {
			return fmt.Errorf("shares: read audit log %s: %w", name, err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("shares: audit log %s line %d: %w", name, n, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
