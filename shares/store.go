package shares

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
)

// StoreSchemaVersion is the version of the store's layout. OpenStore
// refuses a file with any other version (rule S6). The values are encoded
// envelopes, which carry their own version (EnvelopeVersion); an envelope
// of an older version is listed and deleted like any other, but Get refuses
// it with ErrEnvelopeVersion.
//
// Layout of version 1:
//
//	bucket "meta":      "schema" -> u32 big endian (1)
//	bucket "envelopes": u64 generation (big endian) || binary owner peer ID
//	                    -> the envelope's canonical encoding (ParseEnvelope)
const StoreSchemaVersion = 1

var (
	bucketMeta      = []byte("meta")
	bucketEnvelopes = []byte("envelopes")
	keySchema       = []byte("schema")
)

// ErrUnknownSchema: the store file has a schema version this code does not
// know, or is not a shares store.
var ErrUnknownSchema = errors.New("shares: unknown store schema")

// Key names one stored envelope.
type Key struct {
	Generation uint64
	Owner      peer.ID
}

// putBatchDelay is how long a Put waits for others to share its commit.
const putBatchDelay = time.Millisecond

// A rewrite waits eraseBatchDelay for other deletes to join it, and then as
// long as deletes are still committing, up to eraseMaxWait, so a burst of
// deletes costs one rewrite of the file.
const (
	eraseBatchDelay = time.Millisecond
	eraseMaxWait    = 50 * time.Millisecond
)

// compactSuffix names the temporary file a rewrite writes next to the
// store. OpenStore removes a leftover one.
const compactSuffix = ".compact"

// Store is the holder's envelope store: a bbolt file holding only sealed
// envelopes, at most one per (generation, owner). The holder is always the
// local node, so that is also one per (generation, owner, holder). The node
// keeps its own self-addressed envelopes here too (holder == owner).
// A Store is safe for concurrent use.
//
// Deleted envelopes are erased from the file, not only unlinked from the
// B+tree: bbolt's Delete frees a page without overwriting it, so every call
// that deletes rewrites the store into a fresh file (bbolt Compact), renames
// it over the old one, and overwrites the old file's contents with zeros
// before it returns. See the package documentation for what that
// guarantees.
type Store struct {
	path string

	// mu is held shared by every operation on db and exclusively while
	// the file is rewritten and db swapped.
	mu sync.RWMutex
	db *bolt.DB // nil once closed

	emu      sync.Mutex
	inflight int         // deletes not yet committed
	deleted  uint64      // deletes committed so far (under mu, shared)
	erased   uint64      // deletes covered by the last successful rewrite
	next     *eraseRound // the round that has not started yet
	running  bool        // the eraser goroutine runs
	wg       sync.WaitGroup

	// fault, in tests, is called at each stage of a rewrite; an error
	// stops it there, as a crash would.
	fault func(stage string) error

	// onDelete, if set (by the Service using this store), is told of the
	// envelopes each delete removed, once it has committed.
	onDelete atomic.Pointer[deleteHook]
}

// deleteHook is told which envelopes one Store call deleted and why (a
// Deleted* reason). The bindings are read from the deleted records; a
// record that does not parse gives only its generation and owner.
type deleteHook func(reason string, deleted []Binding)

// deletedBinding is the binding of a record about to be deleted.
func deletedBinding(k, v []byte) Binding {
	key, err := decodeKey(k)
	if err != nil {
		return Binding{}
	}
	if env, err := decodeValue(key, v); err == nil {
		return env.Binding
	}
	return Binding{Generation: key.Generation, Owner: key.Owner}
}

// eraseRound is one rewrite of the file, shared by every delete that
// committed before it started.
type eraseRound struct {
	done chan struct{}
	err  error
}

// OpenStore opens or creates the store at path (file mode 0600). It gives
// up after a second if another process holds the file. It removes a
// temporary file left by a rewrite that was interrupted, and rewrites the
// store once, so envelopes deleted before a crash (or by an older version)
// are erased before the store is used.
func OpenStore(path string) (*Store, error) {
	db, err := openBolt(path)
	if err != nil {
		return nil, fmt.Errorf("shares: open store %s: %w", path, err)
	}
	if err := checkSchema(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("shares: open store %s: %w", path, err)
	}
	s := &Store{path: path, db: db}
	// The file lock is ours now, so no other process is rewriting: a
	// temporary file is a leftover of a crash, and the store file itself is
	// complete (the rename is the commit point of a rewrite).
	if err := os.Remove(path + compactSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		db.Close()
		return nil, fmt.Errorf("shares: open store %s: remove leftover rewrite: %w", path, err)
	}
	s.mu.Lock()
	err = s.rewriteLocked()
	s.mu.Unlock()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("shares: open store %s: %w", path, err)
	}
	return s, nil
}

// checkSchema checks the schema of an existing store, or lays out an empty
// file as a new one. An existing store is only read.
func checkSchema(db *bolt.DB) error {
	fresh := false
	err := db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			if err := tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil }); err != nil {
				return err
			}
			if !empty {
				return fmt.Errorf("%w: no meta bucket", ErrUnknownSchema)
			}
			fresh = true
			return nil
		}
		v := meta.Get(keySchema)
		if len(v) != 4 {
			return fmt.Errorf("%w: bad schema record", ErrUnknownSchema)
		}
		if got := binary.BigEndian.Uint32(v); got != StoreSchemaVersion {
			return fmt.Errorf("%w: version %d, this build reads %d", ErrUnknownSchema, got, StoreSchemaVersion)
		}
		if tx.Bucket(bucketEnvelopes) == nil {
			return fmt.Errorf("%w: no envelopes bucket", ErrUnknownSchema)
		}
		return nil
	})
	if err != nil || !fresh {
		return err
	}
	return db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, StoreSchemaVersion)); err != nil {
			return err
		}
		_, err = tx.CreateBucket(bucketEnvelopes)
		return err
	})
}

func openBolt(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	db.MaxBatchDelay = putBatchDelay
	return db, nil
}

// Close closes the file. A delete waiting for its erasure gets ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	db := s.db
	s.db = nil
	s.mu.Unlock()
	s.wg.Wait()
	if db == nil {
		return nil
	}
	return db.Close()
}

// view runs fn on the open database, with mu held shared.
func (s *Store) view(fn func(db *bolt.DB) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	return fn(s.db)
}

func encodeKey(gen uint64, owner peer.ID) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(owner)), gen)
	return append(k, owner...)
}

// decodeKey is the inverse of encodeKey.
func decodeKey(k []byte) (Key, error) {
	if len(k) < 9 {
		return Key{}, fmt.Errorf("shares: store key of %d bytes", len(k))
	}
	owner := peer.ID(k[8:])
	if err := validatePeerID(owner); err != nil {
		return Key{}, fmt.Errorf("shares: store key: %w", err)
	}
	return Key{Generation: binary.BigEndian.Uint64(k[:8]), Owner: owner}, nil
}

// decodeValue decodes a stored envelope and checks that it belongs under
// its key.
func decodeValue(k Key, v []byte) (*Envelope, error) {
	env, err := ParseEnvelope(v)
	if err != nil {
		return nil, fmt.Errorf("shares: stored envelope (gen %d, owner %s): %w", k.Generation, k.Owner, err)
	}
	if env.Binding.Generation != k.Generation || env.Binding.Owner != k.Owner {
		return nil, fmt.Errorf("shares: stored envelope (gen %d, owner %s) is bound to (gen %d, owner %s)",
			k.Generation, k.Owner, env.Binding.Generation, env.Binding.Owner)
	}
	return env, nil
}

// encodeValue checks that env may be stored under (gen, owner) and encodes
// it.
func encodeValue(gen uint64, owner peer.ID, env *Envelope) ([]byte, error) {
	if env == nil {
		return nil, fmt.Errorf("%w: nil", ErrInvalidEnvelope)
	}
	if env.Binding.Generation != gen || env.Binding.Owner != owner {
		return nil, fmt.Errorf("%w: bound to (gen %d, owner %s), stored under (gen %d, owner %s)",
			ErrInvalidEnvelope, env.Binding.Generation, env.Binding.Owner, gen, owner)
	}
	v, err := env.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(v) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes", ErrTooLarge, len(v))
	}
	return v, nil
}

// Put stores env under (gen, owner), which must match its binding. If an
// envelope is already stored there, Put returns nil when it is byte for
// byte the same (a retried push is idempotent) and ErrExists otherwise: the
// first envelope stays.
func (s *Store) Put(gen uint64, owner peer.ID, env *Envelope) error {
	v, err := encodeValue(gen, owner, env)
	if err != nil {
		return err
	}
	k := encodeKey(gen, owner)
	// Batch: pushes from several owners arrive together when a generation
	// opens, and share one commit (one fsync pair) instead of one each. The
	// function is idempotent, as Batch requires.
	return s.view(func(db *bolt.DB) error {
		return db.Batch(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEnvelopes)
			if old := b.Get(k); old != nil {
				if bytes.Equal(old, v) {
					return nil
				}
				return fmt.Errorf("%w: gen %d, owner %s", ErrExists, gen, owner)
			}
			return b.Put(k, v)
		})
	})
}

// Replace stores env under (gen, owner) in place of old, if old (compared
// byte for byte) is what is stored there; otherwise it returns ErrExists,
// or ErrNotFound if nothing is. The old envelope is erased from the disk
// before Replace returns, like a deleted one.
func (s *Store) Replace(gen uint64, owner peer.ID, old, env *Envelope) error {
	v, err := encodeValue(gen, owner, env)
	if err != nil {
		return err
	}
	was, err := encodeValue(gen, owner, old)
	if err != nil {
		return err
	}
	k := encodeKey(gen, owner)
	return s.deleting(DeletedReplaced, func(tx *bolt.Tx) ([]Binding, error) {
		b := tx.Bucket(bucketEnvelopes)
		cur := b.Get(k)
		switch {
		case cur == nil:
			return nil, fmt.Errorf("%w: gen %d, owner %s", ErrNotFound, gen, owner)
		case bytes.Equal(cur, v):
			return nil, nil // already replaced
		case !bytes.Equal(cur, was):
			return nil, fmt.Errorf("%w: gen %d, owner %s: another envelope than the one to replace", ErrExists, gen, owner)
		}
		return []Binding{old.Binding}, b.Put(k, v)
	})
}

// Get returns the envelope stored under (gen, owner), or ErrNotFound. Its
// Binding.Split is the split the holder keeps for (gen, owner).
func (s *Store) Get(gen uint64, owner peer.ID) (*Envelope, error) {
	k := encodeKey(gen, owner)
	var env *Envelope
	err := s.view(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			v := tx.Bucket(bucketEnvelopes).Get(k)
			if v == nil {
				return fmt.Errorf("%w: gen %d, owner %s", ErrNotFound, gen, owner)
			}
			var err error
			env, err = decodeValue(Key{Generation: gen, Owner: owner}, v)
			return err
		})
	})
	return env, err
}

// Delete removes the envelope under (gen, owner) and erases it from the
// disk. Deleting a missing one is not an error.
func (s *Store) Delete(gen uint64, owner peer.ID) error {
	return s.DeleteKeys([]Key{{Generation: gen, Owner: owner}})
}

// DeleteKeys removes the envelopes under keys, in one transaction, and
// erases them from the disk with one rewrite of the file. Missing ones are
// skipped. Prefer it to a loop of Delete, each of which rewrites the file.
func (s *Store) DeleteKeys(keys []Key) error {
	return s.deleting(DeletedKeys, func(tx *bolt.Tx) ([]Binding, error) {
		b := tx.Bucket(bucketEnvelopes)
		var gone []Binding
		for _, key := range keys {
			k := encodeKey(key.Generation, key.Owner)
			v := b.Get(k)
			if v == nil {
				continue
			}
			bd := deletedBinding(k, v)
			if err := b.Delete(k); err != nil {
				return nil, err
			}
			gone = append(gone, bd)
		}
		return gone, nil
	})
}

// DeleteOwner removes every envelope of owner, in every generation (rule
// R1: a removed member's envelopes are deleted), and erases them from the
// disk.
func (s *Store) DeleteOwner(owner peer.ID) error {
	return s.deleteWhere(DeletedOwner, nil, func(k []byte) bool { return peer.ID(k[8:]) == owner })
}

// DeleteGeneration removes every envelope of generation gen (rules G3 and
// G4: aborted and retired generations), and erases them from the disk.
func (s *Store) DeleteGeneration(gen uint64) error {
	return s.deleteWhere(DeletedGeneration, binary.BigEndian.AppendUint64(nil, gen), func([]byte) bool { return true })
}

// deleteWhere deletes, in one transaction, every key with the prefix for
// which match is true. Keys are collected first: deleting under a moving
// bbolt cursor skips items.
func (s *Store) deleteWhere(reason string, prefix []byte, match func(k []byte) bool) error {
	return s.deleting(reason, func(tx *bolt.Tx) ([]Binding, error) {
		b := tx.Bucket(bucketEnvelopes)
		var keys [][]byte
		var gone []Binding
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(k) > 8 && match(k) {
				keys = append(keys, append([]byte(nil), k...))
				gone = append(gone, deletedBinding(k, v))
			}
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return nil, err
			}
		}
		return gone, nil
	})
}

// deleting runs fn, which deletes or overwrites envelopes and returns
// their bindings, in a write transaction, then returns only once the file
// holds no trace of them: a rewrite that started after the commit has
// completed. If an earlier rewrite failed, it tries again even when fn
// deleted nothing, so a retried delete does not return before its data is
// erased. Once the transaction has committed, the delete hook (if any) is
// told of the deleted envelopes, with reason.
//
// Concurrent deletes share a bbolt Batch (fn must be idempotent: Batch may
// run it twice) and then one rewrite.
func (s *Store) deleting(reason string, fn func(tx *bolt.Tx) ([]Binding, error)) error {
	s.emu.Lock()
	s.inflight++
	s.emu.Unlock()
	var gone []Binding
	var seq uint64
	err := s.view(func(db *bolt.DB) error {
		err := db.Batch(func(tx *bolt.Tx) error {
			var err error
			gone, err = fn(tx)
			return err
		})
		n := len(gone)
		// Counted while mu is held shared, so a rewrite, which holds it
		// exclusively, sees every committed delete.
		s.emu.Lock()
		if err == nil && n > 0 {
			s.deleted++
		}
		s.emu.Unlock()
		return err
	})
	s.emu.Lock()
	s.inflight--
	seq = s.deleted
	s.emu.Unlock()
	if err != nil {
		return err
	}
	if h := s.onDelete.Load(); h != nil && len(gone) > 0 {
		(*h)(reason, gone)
	}
	return s.waitErased(seq)
}

// waitErased returns once a rewrite covering the first seq deletes has
// completed, starting one if needed. Deletes that come while a rewrite runs
// share the next one.
func (s *Store) waitErased(seq uint64) error {
	s.emu.Lock()
	if s.erased >= seq {
		s.emu.Unlock()
		return nil
	}
	r := s.next
	if r == nil {
		r = &eraseRound{done: make(chan struct{})}
		s.next = r
	}
	if !s.running {
		s.running = true
		s.wg.Add(1)
		go s.eraser()
	}
	s.emu.Unlock()
	<-r.done
	return r.err
}

// eraser runs the pending rounds one after the other, then exits. A round
// starts only after every delete that joined it has committed, so its
// rewrite covers them.
func (s *Store) eraser() {
	defer s.wg.Done()
	for {
		// Let a burst of deletes join this round: wait a moment, then while
		// deletes are still committing (bounded).
		time.Sleep(eraseBatchDelay)
		for waited := eraseBatchDelay; waited < eraseMaxWait && s.inFlight() > 0; waited += eraseBatchDelay {
			time.Sleep(eraseBatchDelay)
		}
		s.emu.Lock()
		r := s.next
		if r == nil {
			s.running = false
			s.emu.Unlock()
			return
		}
		s.next = nil
		s.emu.Unlock()

		s.mu.Lock()
		s.emu.Lock()
		covers := s.deleted // every committed delete: they held mu shared
		s.emu.Unlock()
		var err error
		if s.db == nil {
			err = ErrClosed
		} else {
			err = s.rewriteLocked()
		}
		s.mu.Unlock()

		s.emu.Lock()
		if err == nil && covers > s.erased {
			s.erased = covers
		}
		s.emu.Unlock()
		if err != nil && !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: %w", ErrNotErased, err)
		}
		r.err = err
		close(r.done)
	}
}

func (s *Store) inFlight() int {
	s.emu.Lock()
	defer s.emu.Unlock()
	return s.inflight
}

// rewriteLocked replaces the store file with a compacted copy that holds
// the live records only, and overwrites the old file with zeros. mu must be
// held exclusively. The steps, and what a crash after each leaves:
//
//  1. bbolt Compact into path+".compact", a fresh file (every commit of
//     bbolt is fsynced): the old store is complete; OpenStore removes the
//     temporary file.
//  2. rename it over path, fsync the directory: path is the old or the new
//     store, each complete.
//  3. overwrite the old file (now unlinked, still open) with zeros, fsync,
//     close it: path is the new store; the old file's blocks, if the crash
//     came before its zeros reached the disk, are free blocks of the file
//     system, in no file.
//
// On an error before step 2 the old store stays in use; after it, the new
// one is used and the error is returned.
func (s *Store) rewriteLocked() error {
	tmp := s.path + compactSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", tmp, err)
	}
	dst, err := openBolt(tmp)
	if err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	abort := func(err error) error {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("rewrite: %w", err)
	}
	if err := bolt.Compact(dst, s.db, 0); err != nil {
		return abort(err)
	}
	if err := dst.Sync(); err != nil {
		return abort(err)
	}
	if err := s.hook("compacted"); err != nil {
		return abort(err)
	}
	// The old inode, to erase once nothing names it.
	old, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return abort(err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		old.Close()
		return abort(err)
	}
	// From here on dst is the store. bbolt uses the file name only when it
	// opens a file, so dst keeps working under its new name.
	s.db.Close()
	s.db = dst
	if err := s.hook("renamed"); err != nil {
		old.Close()
		return fmt.Errorf("rewrite: %w", err)
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		// The rename may not be durable: zeroing the old file now could
		// leave path naming a file of zeros after a crash.
		old.Close()
		return fmt.Errorf("rewrite: sync directory: %w", err)
	}
	if err := s.hook("synced"); err != nil {
		old.Close()
		return fmt.Errorf("rewrite: %w", err)
	}
	err = zeroFile(old)
	if cerr := old.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rewrite: erase old file: %w", err)
	}
	return nil
}

func (s *Store) hook(stage string) error {
	if s.fault == nil {
		return nil
	}
	return s.fault(stage)
}

// zeroFile overwrites f's whole contents with zeros and fsyncs it.
func zeroFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	zeros := make([]byte, 64<<10)
	for off := int64(0); off < fi.Size(); off += int64(len(zeros)) {
		n := min(int64(len(zeros)), fi.Size()-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// List returns the keys of every stored envelope, ordered by generation,
// then by owner's binary peer ID.
func (s *Store) List() ([]Key, error) {
	var keys []Key
	err := s.view(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEnvelopes).ForEach(func(k, _ []byte) error {
				key, err := decodeKey(k)
				if err != nil {
					return err
				}
				keys = append(keys, key)
				return nil
			})
		})
	})
	return keys, err
}
