package shares

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
)

func openTestStore(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shares.db")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func sealFor(t testing.TB, key crypto.PrivKey, owner, holder peer.ID, gen uint64, share []byte) *Envelope {
	t.Helper()
	env, err := Seal(key, Binding{ClusterID: testCluster, Owner: owner, Generation: gen, Holder: holder, Split: testSplit}, shareOf(share), nil)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestStore(t *testing.T) {
	s, path := openTestStore(t)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode %v (err %v), want 0600", fi.Mode().Perm(), err)
	}
	aKey, a := newKey(t)
	bKey, b := newKey(t)
	_, holder := newKey(t)

	e1 := sealFor(t, aKey, a, holder, 1, []byte("a1"))
	if err := s.Put(1, a, e1); err != nil {
		t.Fatal(err)
	}
	// Same bytes again: idempotent. Different envelope: refused.
	if err := s.Put(1, a, e1); err != nil {
		t.Fatalf("identical Put: %v", err)
	}
	if err := s.Put(1, a, sealFor(t, aKey, a, holder, 1, []byte("a1"))); !errors.Is(err, ErrExists) {
		t.Fatalf("different Put: %v, want ErrExists", err)
	}
	// The key must match the binding.
	if err := s.Put(2, a, e1); !errors.Is(err, ErrInvalidEnvelope) {
		t.Fatalf("Put under the wrong generation: %v", err)
	}
	got, err := s.Get(1, a)
	if err != nil || Digest(got) != Digest(e1) {
		t.Fatalf("Get = %v, %v", got, err)
	}
	if _, err := s.Get(1, b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}

	for _, k := range []Key{{2, a}, {3, a}, {1, b}, {2, b}} {
		key := aKey
		if k.Owner == b {
			key = bKey
		}
		if err := s.Put(k.Generation, k.Owner, sealFor(t, key, k.Owner, holder, k.Generation, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := s.List()
	if err != nil || len(keys) != 5 {
		t.Fatalf("List = %v, %v", keys, err)
	}
	if !slices.IsSortedFunc(keys, func(x, y Key) int { return int(x.Generation) - int(y.Generation) }) {
		t.Fatalf("List not ordered by generation: %v", keys)
	}
	if err := s.DeleteGeneration(2); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.List()
	if len(keys) != 3 || slices.ContainsFunc(keys, func(k Key) bool { return k.Generation == 2 }) {
		t.Fatalf("after DeleteGeneration(2): %v", keys)
	}
	if err := s.DeleteOwner(a); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.List()
	if len(keys) != 1 || keys[0] != (Key{1, b}) {
		t.Fatalf("after DeleteOwner(a): %v", keys)
	}
	if err := s.Delete(1, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(1, b); err != nil {
		t.Fatalf("deleting a missing envelope: %v", err)
	}
	if keys, _ := s.List(); len(keys) != 0 {
		t.Fatalf("store not empty: %v", keys)
	}
}

func TestStoreReopenAndSchema(t *testing.T) {
	s, path := openTestStore(t)
	aKey, a := newKey(t)
	_, holder := newKey(t)
	e := sealFor(t, aKey, a, holder, 9, []byte("share"))
	if err := s.Put(9, a, e); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Get(9, a); err != nil || Digest(got) != Digest(e) {
		t.Fatalf("after reopen: %v, %v", got, err)
	}
	s2.Close()

	// A future schema version is refused.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, StoreSchemaVersion+1))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s3, err := OpenStore(path); !errors.Is(err, ErrUnknownSchema) {
		if s3 != nil {
			s3.Close()
		}
		t.Fatalf("future schema: %v, want ErrUnknownSchema", err)
	}

	// A bbolt file that is not a shares store is refused.
	other := filepath.Join(t.TempDir(), "other.db")
	db, _ = bolt.Open(other, 0o600, nil)
	_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("raft")); return err })
	db.Close()
	if _, err := OpenStore(other); !errors.Is(err, ErrUnknownSchema) {
		t.Fatalf("foreign bbolt file: %v, want ErrUnknownSchema", err)
	}
}
