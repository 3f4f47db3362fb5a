package shares

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
)

// secretWindows returns every 16-byte window of the parts of env that no
// other envelope has: its ciphertext and its nonce.
func secretWindows(env *Envelope) [][]byte {
	var w [][]byte
	for _, b := range [][]byte{env.Ciphertext, env.Nonce} {
		for i := 0; i+16 <= len(b); i++ {
			w = append(w, b[i:i+16])
		}
	}
	return w
}

// dirBytes reads every file under dir as raw bytes. A file that vanishes
// while it is read (a rewrite's temporary file) is skipped.
func dirBytes(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		files[path] = b
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return files
}

// traces reports, for each file under dir, which of envs leave a 16-byte
// window of their ciphertext or nonce in it.
func traces(t testing.TB, dir string, envs map[string]*Envelope) []string {
	t.Helper()
	var found []string
	for path, raw := range dirBytes(t, dir) {
		for name, env := range envs {
			for _, w := range secretWindows(env) {
				if bytes.Contains(raw, w) {
					found = append(found, fmt.Sprintf("%s in %s", name, filepath.Base(path)))
					break
				}
			}
		}
	}
	slices.Sort(found)
	return found
}

// storeFixture is a store holding envelopes of three owners in four
// generations, each sealing a real Shamir share.
type storeFixture struct {
	s    *Store
	path string
	keys map[peer.ID]crypto.PrivKey
	own  []peer.ID
	envs map[Key]*Envelope
}

func newStoreFixture(t testing.TB, gens uint64) *storeFixture {
	t.Helper()
	s, path := openTestStore(t)
	f := &storeFixture{s: s, path: path, keys: map[peer.ID]crypto.PrivKey{}, envs: map[Key]*Envelope{}}
	_, holder := newKey(t)
	for range 3 {
		k, id := newKey(t)
		f.keys[id] = k
		f.own = append(f.own, id)
	}
	for g := uint64(1); g <= gens; g++ {
		for _, o := range f.own {
			parts, err := Split(randomKey(t), 3, 2)
			if err != nil {
				t.Fatal(err)
			}
			env, err := Seal(f.keys[o], Binding{ClusterID: testCluster, Owner: o, Generation: g, Holder: holder, Split: NewSplitID()}, parts[0], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Put(g, o, env); err != nil {
				t.Fatal(err)
			}
			f.envs[Key{g, o}] = env
		}
	}
	return f
}

// split returns the envelopes named by keys and the others.
func (f *storeFixture) split(gone []Key) (deleted, live map[string]*Envelope) {
	deleted, live = map[string]*Envelope{}, map[string]*Envelope{}
	for k, env := range f.envs {
		name := fmt.Sprintf("gen %d owner %d", k.Generation, slices.Index(f.own, k.Owner))
		if slices.Contains(gone, k) {
			deleted[name] = env
		} else {
			live[name] = env
		}
	}
	return deleted, live
}

// checkLive reopens the store and checks that exactly the live envelopes
// are there, byte for byte, and open with their owners' keys.
func (f *storeFixture) checkLive(t testing.TB, gone []Key) {
	t.Helper()
	s, err := OpenStore(f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(f.envs)-len(gone) {
		t.Fatalf("%d envelopes stored, want %d", len(keys), len(f.envs)-len(gone))
	}
	for k, env := range f.envs {
		got, err := s.Get(k.Generation, k.Owner)
		if slices.Contains(gone, k) {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted %v: %v", k, err)
			}
			continue
		}
		if err != nil || Digest(got) != Digest(env) {
			t.Fatalf("live %v: %v", k, err)
		}
		if _, _, err := Open(f.keys[k.Owner], got); err != nil {
			t.Fatalf("live %v does not open: %v", k, err)
		}
	}
}

// TestDeletedEnvelopesErased: after every kind of delete, no file of the
// store's directory holds any 16-byte window of a deleted envelope's
// ciphertext or nonce, and the live ones still load.
func TestDeletedEnvelopesErased(t *testing.T) {
	f := newStoreFixture(t, 5)
	dir := filepath.Dir(f.path)
	a, b, c := f.own[0], f.own[1], f.own[2]
	var gone []Key
	step := func(name string, del func() error, keys ...Key) {
		t.Helper()
		if err := del(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		gone = append(gone, keys...)
		// Erased when the call returns, while the store is open.
		deleted, _ := f.split(gone)
		if tr := traces(t, dir, deleted); len(tr) > 0 {
			t.Fatalf("after %s, deleted envelopes remain on disk: %v", name, tr)
		}
	}
	step("Delete", func() error { return f.s.Delete(1, a) }, Key{1, a})
	step("Delete of a missing key", func() error { return f.s.Delete(1, a) })
	step("DeleteGeneration", func() error { return f.s.DeleteGeneration(2) }, Key{2, a}, Key{2, b}, Key{2, c})
	step("DeleteOwner", func() error { return f.s.DeleteOwner(c) }, Key{1, c}, Key{3, c}, Key{4, c}, Key{5, c})
	step("DeleteKeys", func() error { return f.s.DeleteKeys([]Key{{3, a}, {4, b}, {9, a}}) }, Key{3, a}, Key{4, b})
	// Replace erases the envelope it replaces.
	old := f.envs[Key{5, a}]
	parts, _ := Split(randomKey(t), 3, 2)
	repl, err := Seal(f.keys[a], Binding{ClusterID: testCluster, Owner: a, Generation: 5, Holder: old.Binding.Holder, Split: NewSplitID()}, parts[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	step("Replace", func() error { return f.s.Replace(5, a, old, repl) })
	if err := f.s.Close(); err != nil {
		t.Fatal(err)
	}
	if deleted, _ := f.split(gone); true {
		deleted["replaced gen 5 owner 0"] = old
		if tr := traces(t, dir, deleted); len(tr) > 0 {
			t.Fatalf("deleted envelopes remain on disk: %v", tr)
		}
	}
	f.envs[Key{5, a}] = repl
	// Only the store file is left: no temporary file.
	if files := dirBytes(t, dir); len(files) != 1 || files[f.path] == nil {
		t.Fatalf("files in the store's directory: %d", len(files))
	}
	if fi, err := os.Stat(f.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode after rewrites: %v (%v)", fi.Mode().Perm(), err)
	}
	f.checkLive(t, gone)
	// The live ones are on disk (the scan does find what is there).
	_, live := f.split(gone)
	if tr := traces(t, dir, live); len(tr) != len(live) {
		t.Fatalf("the scan finds %d of %d live envelopes", len(tr), len(live))
	}
}

// TestBoltDeleteLeavesData is the control of TestDeletedEnvelopesErased:
// a plain bbolt Delete, without the rewrite, leaves the envelope in a freed
// page, and the scan finds it.
func TestBoltDeleteLeavesData(t *testing.T) {
	f := newStoreFixture(t, 2)
	f.s.Close()
	db, err := bolt.Open(f.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := Key{1, f.own[0]}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEnvelopes).Delete(encodeKey(k.Generation, k.Owner))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	deleted, _ := f.split([]Key{k})
	if tr := traces(t, filepath.Dir(f.path), deleted); len(tr) == 0 {
		t.Fatal("bbolt's Delete erased the envelope: the control shows nothing")
	}
	// Opening the store erases it.
	f.checkLive(t, []Key{k})
	if tr := traces(t, filepath.Dir(f.path), deleted); len(tr) > 0 {
		t.Fatalf("OpenStore left a deleted envelope on disk: %v", tr)
	}
}

// TestDeleteThroughService drives deletes as the node does: envelopes
// arrive by push over real hosts, and the node's sweep deletes a finished
// generation and a removed owner through the Store.
func TestDeleteThroughService(t *testing.T) {
	a, b, h := newTestNode(t, testCluster), newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b, h)
	pushed := map[string]*Envelope{}
	for g := uint64(1); g <= 3; g++ {
		for _, o := range []*testNode{a, b} {
			parts, _ := Split(randomKey(t), 2, 2)
			env := o.seal(h.id, g, parts[0])
			if _, err := o.svc.Push(ctx(t), h.id, env); err != nil {
				t.Fatal(err)
			}
			pushed[fmt.Sprintf("g%d/%s", g, o.id)] = env
		}
	}
	if err := h.store.DeleteGeneration(1); err != nil {
		t.Fatal(err)
	}
	if err := h.store.DeleteOwner(b.id); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Fetch(ctx(t), h.id, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a deleted envelope: %v", err)
	}
	if _, err := a.svc.Fetch(ctx(t), h.id, 2); err != nil {
		t.Fatalf("fetch of a live envelope: %v", err)
	}
	h.svc.Close()
	h.store.Close()
	deleted, live := map[string]*Envelope{}, map[string]*Envelope{}
	for name, env := range pushed {
		if env.Binding.Generation == 1 || env.Binding.Owner == b.id {
			deleted[name] = env
		} else {
			live[name] = env
		}
	}
	dir := filepath.Dir(h.path)
	if tr := traces(t, dir, deleted); len(tr) > 0 {
		t.Fatalf("deleted envelopes remain on the holder's disk: %v", tr)
	}
	if tr := traces(t, dir, live); len(tr) != len(live) {
		t.Fatalf("live envelopes on disk: %v", tr)
	}
}

var errCrash = errors.New("simulated crash")

// TestRewriteCrash stops a rewrite at each of its stages, as a crash
// would, and checks that the store opens complete, with the delete done
// and erased by the rewrite that OpenStore makes.
func TestRewriteCrash(t *testing.T) {
	for _, stage := range []string{"compacted", "renamed", "synced"} {
		t.Run(stage, func(t *testing.T) {
			f := newStoreFixture(t, 2)
			f.s.fault = func(s string) error {
				if s == stage {
					return errCrash
				}
				return nil
			}
			gone := []Key{{1, f.own[1]}}
			err := f.s.Delete(1, f.own[1])
			if !errors.Is(err, errCrash) || !errors.Is(err, ErrNotErased) {
				t.Fatalf("delete with a failing rewrite: %v", err)
			}
			// The store keeps working, and retrying the delete retries
			// the erasure even though nothing is left to delete.
			if _, err := f.s.Get(2, f.own[0]); err != nil {
				t.Fatal(err)
			}
			if err := f.s.Delete(1, f.own[1]); !errors.Is(err, errCrash) {
				t.Fatalf("retried delete: %v, want the rewrite retried", err)
			}
			f.s.Close()
			// A crash leaves the temporary file behind.
			if err := os.WriteFile(f.path+compactSuffix, []byte("partial rewrite"), 0o600); err != nil {
				t.Fatal(err)
			}
			f.checkLive(t, gone)
			if _, err := os.Stat(f.path + compactSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("leftover temporary file: %v", err)
			}
			deleted, _ := f.split(gone)
			if tr := traces(t, filepath.Dir(f.path), deleted); len(tr) > 0 {
				t.Fatalf("after reopening: %v", tr)
			}
		})
	}
}

// TestDeleteBurstOneRewrite: concurrent deletes share a rewrite, and each
// returns only after its envelope is erased.
func TestDeleteBurstOneRewrite(t *testing.T) {
	f := newStoreFixture(t, 8)
	var mu sync.Mutex
	rewrites := 0
	f.s.fault = func(stage string) error {
		if stage == "compacted" {
			mu.Lock()
			rewrites++
			mu.Unlock()
		}
		return nil
	}
	dir := filepath.Dir(f.path)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := uint64(1); g <= 8; g++ {
		for _, o := range f.own[:2] {
			wg.Go(func() {
				if err := f.s.Delete(g, o); err != nil {
					errs <- err
					return
				}
				deleted, _ := f.split([]Key{{g, o}})
				if tr := traces(t, dir, deleted); len(tr) > 0 {
					errs <- fmt.Errorf("delete of (%d, %s) returned before erasure: %v", g, o, tr)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("16 concurrent deletes, %d rewrites", rewrites)
	if rewrites < 1 || rewrites > 2 {
		t.Fatalf("16 concurrent deletes made %d rewrites, want 1 (2 at most)", rewrites)
	}
}

// TestStoreOpsAfterClose: a closed store refuses everything with
// ErrClosed.
func TestStoreOpsAfterClose(t *testing.T) {
	f := newStoreFixture(t, 1)
	f.s.Close()
	for name, err := range map[string]error{
		"Get":    func() error { _, err := f.s.Get(1, f.own[0]); return err }(),
		"Delete": f.s.Delete(1, f.own[0]),
		"Put":    f.s.Put(1, f.own[0], f.envs[Key{1, f.own[0]}]),
		"List":   func() error { _, err := f.s.List(); return err }(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if err := f.s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
