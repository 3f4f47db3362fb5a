package shares

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
)

// StoreSchemaVersion is the version of the store's layout. OpenStore
// refuses a file with any other version (rule S6).
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

// Store is the holder's envelope store: a bbolt file holding only sealed
// envelopes, at most one per (generation, owner). The holder is always the
// local node, so that is also one per (generation, owner, holder). The node
// keeps its own self-addressed envelopes here too (holder == owner).
// A Store is safe for concurrent use.
// putBatchDelay is how long a Put waits for others to share its commit.
const putBatchDelay = time.Millisecond

type Store struct {
	db *bolt.DB
}

// OpenStore opens or creates the store at path (file mode 0600). It gives
// up after a second if another process holds the file.
func OpenStore(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("shares: open store %s: %w", path, err)
	}
	db.MaxBatchDelay = putBatchDelay

	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			if err := tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil }); err != nil {
				return err
			}
			if !empty {
				return fmt.Errorf("%w: no meta bucket", ErrUnknownSchema)
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, StoreSchemaVersion)); err != nil {
				return err
			}
			_, err = tx.CreateBucket(bucketEnvelopes)
			return err
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
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("shares: open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error {
	return s.db.Close()
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

// Put stores env under (gen, owner), which must match its binding. If an
// envelope is already stored there, Put returns nil when it is byte for
// byte the same (a retried push is idempotent) and ErrExists otherwise: the
// first envelope stays.
func (s *Store) Put(gen uint64, owner peer.ID, env *Envelope) error {
	if env == nil {
		return fmt.Errorf("%w: nil", ErrInvalidEnvelope)
	}
	if env.Binding.Generation != gen || env.Binding.Owner != owner {
		return fmt.Errorf("%w: bound to (gen %d, owner %s), stored under (gen %d, owner %s)",
			ErrInvalidEnvelope, env.Binding.Generation, env.Binding.Owner, gen, owner)
	}
	v, err := env.MarshalBinary()
	if err != nil {
		return err
	}
	if len(v) > MaxEnvelopeSize {
		return fmt.Errorf("%w: envelope of %d bytes", ErrTooLarge, len(v))
	}
	k := encodeKey(gen, owner)
	// Batch: pushes from several owners arrive together when a generation
	// opens, and share one commit (one fsync pair) instead of one each. The
	// function is idempotent, as Batch requires.
	return s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEnvelopes)
		if old := b.Get(k); old != nil {
			if bytes.Equal(old, v) {
				return nil
			}
			return fmt.Errorf("%w: gen %d, owner %s", ErrExists, gen, owner)
		}
		return b.Put(k, v)
	})
}

// Get returns the envelope stored under (gen, owner), or ErrNotFound.
func (s *Store) Get(gen uint64, owner peer.ID) (*Envelope, error) {
	k := encodeKey(gen, owner)
	var env *Envelope
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEnvelopes).Get(k)
		if v == nil {
			return fmt.Errorf("%w: gen %d, owner %s", ErrNotFound, gen, owner)
		}
		var err error
		env, err = decodeValue(Key{Generation: gen, Owner: owner}, v)
		return err
	})
	return env, err
}

// Delete removes the envelope under (gen, owner). Deleting a missing one is
// not an error.
func (s *Store) Delete(gen uint64, owner peer.ID) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEnvelopes).Delete(encodeKey(gen, owner))
	})
}

// DeleteOwner removes every envelope of owner, in every generation (rule
// R1: a removed member's envelopes are deleted).
func (s *Store) DeleteOwner(owner peer.ID) error {
	return s.deleteWhere(nil, func(k []byte) bool { return peer.ID(k[8:]) == owner })
}

// DeleteGeneration removes every envelope of generation gen (rules G3 and
// G4: aborted and retired generations).
func (s *Store) DeleteGeneration(gen uint64) error {
	return s.deleteWhere(binary.BigEndian.AppendUint64(nil, gen), func([]byte) bool { return true })
}

// deleteWhere deletes, in one transaction, every key with the prefix for
// which match is true. Keys are collected first: deleting under a moving
// bbolt cursor skips items.
func (s *Store) deleteWhere(prefix []byte, match func(k []byte) bool) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEnvelopes)
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) > 8 && match(k) {
				keys = append(keys, append([]byte(nil), k...))
			}
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// List returns the keys of every stored envelope, ordered by generation,
// then by owner's binary peer ID.
func (s *Store) List() ([]Key, error) {
	var keys []Key
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEnvelopes).ForEach(func(k, _ []byte) error {
			key, err := decodeKey(k)
			if err != nil {
				return err
			}
			keys = append(keys, key)
			return nil
		})
	})
	return keys, err
}
