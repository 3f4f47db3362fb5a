package node

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
	spb "github.com/p2pkey/p2pkey/shares/pb"
)

// Issue 11, acceptance 1: the thief. Someone walks away with one node's
// powered-off data directory. They have its identity key, so they can open
// every envelope the node itself sealed, wherever its bytes are: live in
// the store, in a freed page, in a log, in a snapshot. They must never get
// enough shares of one split to rebuild K, nor any key derived from it.

// thiefPurpose is the purpose of the derived key each node releases before
// it is stolen; the thief tries to rebuild it.
const thiefPurpose = "thief-test"

// Tests of the thief itself: the same scan finds envelopes in a freed bbolt
// page and wins when a file holds a threshold of one split, so the cluster
// tests below can fail.
func TestThiefScanFindsFreedPagesAndWins(t *testing.T) {
	dir := t.TempDir()
	priv, err := p2p.CreateIdentity(filepath.Join(dir, "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	self, _ := peer.IDFromPrivateKey(priv)
	otherPriv, _, _ := crypto.GenerateEd25519Key(nil)
	other, _ := peer.IDFromPrivateKey(otherPriv)
	k, _ := newK()
	clusterID := "0123456789abcdef0123456789abcdef"
	parts, err := shares.Split(k, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	split := shares.NewSplitID()
	var encoded [][]byte
	for i, h := range []peer.ID{self, other, other} {
		env, err := shares.Seal(priv, shares.Binding{ClusterID: clusterID, Owner: self, Generation: uint64(i + 1), Holder: h, Split: split}, parts[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := env.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		encoded = append(encoded, b)
	}
	// Two envelopes of one split put into a bbolt file and deleted: bbolt
	// frees their pages without erasing them.
	db, err := bolt.Open(filepath.Join(dir, "freed.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		for i, e := range encoded[:2] {
			if err := b.Put([]byte{byte(i)}, e); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("b"))
			for i := range 2 {
				if err := b.Delete([]byte{byte(i)}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// One more, as a fragment inside JSON (base64), with no binding: the
	// thief brute-forces the binding from what it knows.
	frag := encoded[2][fieldOffset(t, encoded[2], 6):]
	if err := os.WriteFile(filepath.Join(dir, "x.json"), fmt.Appendf(nil, `{"blob":%q}`, base64.StdEncoding.EncodeToString(frag)), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := &thiefTargets{}
	tg.addK(k)
	d, _ := DeriveKey(k, clusterID, thiefPurpose)
	tg.addDerived(d)

	h := steal(t, dir, false, []peer.ID{self, other}, 5, []string{clusterID})
	if len(h.shares) != 3 {
		t.Fatalf("the thief opened %d envelopes, want 3 (two in freed pages, one fragment): %s", len(h.shares), h)
	}
	if len(h.orphans) != 3 {
		t.Fatalf("%d envelope records found outside a store, want 3: %v", len(h.orphans), h.orphans)
	}
	if won, how := h.rebuild(tg); !won {
		t.Fatalf("the thief did not rebuild K from a threshold of one split: %s", h)
	} else {
		t.Logf("control: the thief wins as it should (%s)", how)
	}
	// The erasure check finds the envelopes left in freed pages.
	rec := newEnvRecorder()
	rec.seen[dir] = map[string]recorded{}
	for i, b := range encoded[:2] {
		env, err := shares.ParseEnvelope(b)
		if err != nil {
			t.Fatal(err)
		}
		rec.seen[dir][string(env.Nonce)] = recorded{gen: uint64(i + 1), owner: self, env: env}
	}
	if hits := rec.remnants(t, []string{dir}); len(hits) < 4 {
		t.Fatalf("the erasure check found %d remnants of two deleted envelopes, want their nonces and ciphertexts: %v", len(hits), hits)
	}
	// The raw-bytes check catches K itself.
	if err := os.WriteFile(filepath.Join(dir, "k.bin"), append([]byte("junk"), k...), 0o600); err != nil {
		t.Fatal(err)
	}
	if hits := rawSecrets(t, dir, tg); len(hits) != 1 {
		t.Fatalf("raw search found %v, want K in k.bin", hits)
	}
}

func TestThiefCluster1(t *testing.T) { runThief(t, 1) }
func TestThiefCluster2(t *testing.T) { runThief(t, 2) }
func TestThiefCluster3(t *testing.T) { runThief(t, 3) }
func TestThiefCluster5(t *testing.T) { runThief(t, 5) }

// runThief grows a cluster to size, then (from 3 up) removes members down
// to 2, and at every stage steals a stopped node's data directory and every
// live node's, and checks that deleted envelopes left no bytes behind.
func runThief(t *testing.T, size int) {
	r := newThiefRun(t)
	cfg := testConfig(t)
	cfg.Bootstrap = true
	r.add(startNode(t, cfg))
	r.stage("bootstrap")

	if size == 1 {
		r.checkClusterOfOne("after bootstrap")
		// Restarted with no peers: it releases no key either.
		r.stage("restart with no peers")
		r.checkClusterOfOne("after a restart with no peers")
		return
	}
	for i := 1; i < size; i++ {
		r.add(joinNode(t, r.nodes[0]))
		r.stage(fmt.Sprintf("join %d, before retirement", i+1))
		r.settle()
		r.stage(fmt.Sprintf("join %d, old generations retired", i+1))
	}
	// Down to 2 by removal; a cluster of 2 goes on down to 1 (remove warns
	// and needs --yes there, but the node allows it).
	for len(r.nodes) > 2 || size == 2 && len(r.nodes) == 2 {
		victim := r.nodes[len(r.nodes)-1]
		r.noteSecrets(victim)
		r.remove(victim, r.nodes[:len(r.nodes)-1])
		r.nodes = r.nodes[:len(r.nodes)-1]
		r.gone = append(r.gone, victim)
		waitFor(t, "the removed node to know it", 20*time.Second, victim.isRemoved)
		waitAgree(t, r.nodes, len(r.nodes))
		r.stage(fmt.Sprintf("removal down to %d", len(r.nodes)))
		if len(r.nodes) > 1 {
			r.settle()
			r.stage(fmt.Sprintf("removal down to %d, old generations retired", len(r.nodes)))
		}
		// The removed node is stolen too: its K protected data until now.
		victim.Close()
		r.stealStopped("removed node", victim, victim.cfg.DataDir)
	}
	r.rec.mu.Lock()
	deleted := len(r.rec.deletedSeen)
	r.rec.mu.Unlock()
	if deleted == 0 {
		t.Fatal("no envelope was ever deleted: the erasure check checked nothing")
	}
	t.Logf("%d stages; %d deleted envelopes checked for erasure", r.stages, deleted)
}

type thiefRun struct {
	t       *testing.T
	nodes   []*Node // live members, founder first
	gone    []*Node // removed members
	ids     []peer.ID
	tg      *thiefTargets
	rec     *envRecorder
	stages  int
	cluster string
}

func newThiefRun(t *testing.T) *thiefRun {
	r := &thiefRun{t: t, tg: &thiefTargets{}, rec: newEnvRecorder()}
	r.rec.start(t)
	return r
}

func (r *thiefRun) add(n *Node) {
	r.nodes = append(r.nodes, n)
	r.ids = append(r.ids, n.ID())
	r.rec.track(n)
	if r.cluster == "" {
		r.cluster = n.ClusterID()
	}
}

// noteSecrets records what the thief must not rebuild from n: its K (read
// from memory through the test hook) and, once the node releases keys, a
// derived key.
func (r *thiefRun) noteSecrets(n *Node) {
	r.t.Helper()
	if k := n.keys.get(); k != nil {
		if bytes.Count(k, k[:1]) == len(k) {
			r.t.Errorf("K of %s is %x repeated: anyone can guess it", shortPeer(n.ID()), k[:1])
		}
		r.tg.addK(k)
		clear(k)
	}
	if len(activeIDs(n)) < 2 {
		// A cluster of one from the start, or the survivor of a removal
		// down to one (its K was escrowed in a generation of two whose
		// other holder is removed): unescrowed either way.
		_, err := n.Key(ctxT(r.t, time.Second), thiefPurpose, false)
		r.checkUnescrowedErr(err)
		return
	}
	d, err := n.Key(ctxT(r.t, 30*time.Second), thiefPurpose, true)
	if err != nil {
		r.t.Fatalf("key of %s before it is stolen: %v", n.ID(), err)
	}
	r.tg.addDerived(d)
}

func (r *thiefRun) checkUnescrowedErr(err error) {
	r.t.Helper()
	const want = "a cluster of one cannot protect K: invite a second node"
	if !errors.Is(err, ErrUnescrowed) || !errors.Is(err, ErrLocked) || !testkit.ErrorSays(err, want) {
		r.t.Fatalf("key of a cluster of one: %v, want ErrUnescrowed saying %q", err, want)
	}
}

// stage is one point where the thief strikes: every live node's directory
// is read as it is, one node (in turn) is stopped, stolen and restarted,
// and no deleted envelope is left on any disk.
func (r *thiefRun) stage(name string) {
	t := r.t
	t.Helper()
	r.stages++
	start := time.Now()
	for _, n := range r.nodes {
		r.noteSecrets(n)
	}
	r.checkErased(name)
	maxGen := r.maxGeneration()
	victimIdx := (r.stages - 1) % len(r.nodes)
	for i, n := range r.nodes {
		if i == victimIdx {
			continue
		}
		h := steal(t, n.cfg.DataDir, true, r.ids, maxGen, []string{r.cluster})
		r.judge(name+", live copy of "+shortPeer(n.ID()), h)
	}
	victim := r.nodes[victimIdx]
	cfg := victim.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	// It comes back on the same port, as a node on its default port does:
	// the ledger may still name the old address a while after a restart.
	cfg.ListenAddrs = nil
	for _, a := range victim.Host().Network().ListenAddresses() {
		cfg.ListenAddrs = append(cfg.ListenAddrs, a.String())
	}
	if err := victim.Close(); err != nil {
		t.Fatalf("%s: close %s: %v", name, victim.ID(), err)
	}
	r.stealStopped(name, victim, cfg.DataDir)
	again := startNode(t, cfg)
	r.nodes[victimIdx] = again
	r.rec.track(again)
	switch {
	case len(r.nodes) >= 2:
		waitUnlocked(t, r.nodes...)
	case len(r.gone) > 0:
		// The survivor of a removal down to one, restarted with no peer
		// that may serve its shares: it releases no key.
		if d, err := again.Key(ctxT(t, 2*time.Second), thiefPurpose, true); err == nil {
			t.Errorf("%s: the restarted sole survivor released a key (%d bytes)", name, len(d))
		} else {
			t.Logf("NOTE: the restarted sole survivor says: %v", err)
		}
	default:
		// A cluster of one starts over with a fresh K, in memory only.
		waitFor(t, "the restarted single node to hold a fresh K", 20*time.Second, func() bool {
			k := again.keys.get()
			defer clear(k)
			return k != nil
		})
	}
	t.Logf("stage %q: %v", name, time.Since(start).Round(time.Millisecond))
}

func (r *thiefRun) stealStopped(name string, n *Node, dir string) {
	r.t.Helper()
	h := steal(r.t, dir, false, r.ids, r.maxGeneration(), []string{r.cluster})
	r.judge(name+", stopped "+shortPeer(n.ID()), h)
	if hits := r.rec.remnants(r.t, []string{dir}); len(hits) > 0 {
		r.t.Errorf("%s: deleted envelopes still on the stopped node's disk:\n%s", name, strings.Join(hits, "\n"))
	}
}

func (r *thiefRun) judge(where string, h *haul) {
	r.t.Helper()
	if won, how := h.rebuild(r.tg); won {
		r.t.Errorf("%s: THE THIEF WINS: %s (%s)", where, how, h)
	}
	if hits := rawSecrets(r.t, h.dir, r.tg); len(hits) > 0 {
		r.t.Errorf("%s: key material in clear on disk: %v", where, hits)
	}
	if !h.live && len(h.orphans) > 0 {
		r.t.Errorf("%s: envelope bytes on disk that the store does not hold (deleted, not erased): %v", where, h.orphans)
	}
	if len(r.nodes) == 1 && len(r.gone) == 0 && (h.anchors > 0 || h.parsed > 0 || h.viaStore > 0 || len(h.shares) > 0) {
		r.t.Errorf("%s: a cluster of one has envelopes on disk (rule K1): %s", where, h)
	}
	r.t.Logf("%s: %s", where, h)
}

// remove has the voters vote victim out until the removal is final, as
// removeByMajority does, but it also reads the outcome from the ledgers: a
// vote result has been seen to say "not final" (and the next vote to fail
// with ErrMemberRemoved) when the vote did make the removal final.
func (r *thiefRun) remove(victim *Node, voters []*Node) {
	r.t.Helper()
	var votes []string
	note := func() {
		r.t.Logf("NOTE: removing %s, the vote results did not say which vote was final:\n%s", shortPeer(victim.ID()), strings.Join(votes, "\n"))
	}
	removed := func() bool {
		for _, v := range voters {
			if v.memberStatus(victim.ID()) != generations.StatusRemoved || v.cons.InConfiguration(victim.ID()) {
				return false
			}
		}
		return true
	}
	for _, v := range voters {
		vr, err := v.Remove(ctxT(r.t, 20*time.Second), victim.ID())
		votes = append(votes, fmt.Sprintf("  %s: %+v %v (its ledger then says %s)", shortPeer(v.ID()), vr, err, v.memberStatus(victim.ID())))
		switch {
		case err == nil && vr.Final:
			waitFor(r.t, "every voter to see the removal", 20*time.Second, removed)
			return
		case errors.Is(err, generations.ErrMemberRemoved):
			note()
			waitFor(r.t, "every voter to see the removal", 20*time.Second, removed)
			return
		case err != nil:
			r.t.Fatalf("%s votes to remove %s: %v\nafter\n%s\n%s", shortPeer(v.ID()), shortPeer(victim.ID()), err, strings.Join(votes, "\n"), r.dump())
		}
	}
	if err := testkit.Poll(10*time.Second, func() (bool, string) { return removed(), "" }); err != nil {
		r.t.Fatalf("%d votes did not remove %s (%v):\n%s\n%s", len(voters), shortPeer(victim.ID()), err, strings.Join(votes, "\n"), r.dump())
	}
	note()
}

// checkClusterOfOne: the single node's Key is refused as unescrowed, even
// when it waits.
func (r *thiefRun) checkClusterOfOne(when string) {
	r.t.Helper()
	n := r.nodes[0]
	waitFor(r.t, "the single node to say it is unescrowed", 20*time.Second, func() bool {
		_, err := n.Key(ctxT(r.t, time.Second), thiefPurpose, false)
		return errors.Is(err, ErrUnescrowed)
	})
	_, err := n.Key(ctxT(r.t, time.Second), thiefPurpose, false)
	r.checkUnescrowedErr(err)
	if k, err := n.Key(ctxT(r.t, 700*time.Millisecond), thiefPurpose, true); err == nil || k != nil {
		r.t.Fatalf("%s: a cluster of one released a key when asked to wait: %v", when, err)
	}
	if keys, err := n.store.List(); err != nil || len(keys) != 0 {
		r.t.Fatalf("%s: a cluster of one stores envelopes: %v %v", when, keys, err)
	}
}

// settle waits until no generation is open, every active member is
// escrowed in the current generation, and every store keeps exactly the
// current generation's envelopes of active owners: older generations have
// retired and been deleted.
func (r *thiefRun) settle() {
	r.t.Helper()
	if err := testkit.Poll(40*time.Second, func() (bool, string) { return r.settled(), "" }); err != nil {
		r.t.Fatalf("%v waiting for old generations to retire and leave the stores:\n%s", err, r.dump())
	}
	waitUnlocked(r.t, r.nodes...)
	r.nodes[0].view(func(l *generations.Ledger) {
		cur, _ := l.Current()
		for _, p := range l.Active() {
			if c := l.Coverage(p); c.SharesHeld < len(cur.Members) {
				r.t.Logf("NOTE: %s is escrowed in generation %d with %d of %d shares held, and no more will come", shortPeer(p), cur.Number, c.SharesHeld, len(cur.Members))
			}
		}
	})
}

func (r *thiefRun) settled() bool { return escrowSettled(r.nodes) }

// escrowSettled reports whether, on every node, no generation is open,
// every active member is escrowed in the current generation, and the store
// keeps only the current generation's envelopes of active owners: older
// generations have retired and been deleted.
func escrowSettled(nodes []*Node) bool {
	for _, n := range nodes {
		ok := true
		var cur generations.Generation
		var active []peer.ID
		n.view(func(l *generations.Ledger) {
			var has bool
			if cur, has = l.Current(); !has {
				ok = false
				return
			}
			if _, open := l.Open(); open {
				ok = false
				return
			}
			active = l.Active()
			for _, p := range active {
				// Escrowed in the current generation. Not every share need
				// have its receipt: an owner restarted mid-distribution
				// stops at the threshold (its split is gone).
				if c := l.Coverage(p); c.Generation != cur.Number || !c.CanUnlock {
					ok = false
				}
			}
		})
		if !ok || len(active) != len(nodes) {
			return false
		}
		keys, err := n.store.List()
		if err != nil {
			return false
		}
		for _, k := range keys {
			if k.Generation != cur.Number || !slices.Contains(active, k.Owner) {
				return false
			}
		}
	}
	return true
}

// dump describes every live node's ledger and store, for a failure message.
func (r *thiefRun) dump() string {
	var b strings.Builder
	for _, n := range r.nodes {
		lock, p := n.LockState()
		fmt.Fprintf(&b, "node %s (%s %+v, raft %s, applied %d):\n", shortPeer(n.ID()), lock, p, n.cons.State(), n.cons.AppliedIndex())
		n.view(func(l *generations.Ledger) {
			if c, ok := l.Current(); ok {
				fmt.Fprintf(&b, "  current %d members %d threshold %d\n", c.Number, len(c.Members), c.Threshold)
			}
			if o, ok := l.Open(); ok {
				fmt.Fprintf(&b, "  open %d members %d threshold %d deadline %s\n", o.Number, len(o.Members), o.Threshold, o.Deadline.Format(time.TimeOnly))
			}
			for _, m := range l.Members() {
				c := l.Coverage(m.ID)
				fmt.Fprintf(&b, "  member %s %s: escrowed in %d, %d held, threshold %d\n", shortPeer(m.ID), m.Status, c.Generation, c.SharesHeld, c.Threshold)
			}
		})
		keys, err := n.store.List()
		fmt.Fprintf(&b, "  store: ")
		for _, k := range keys {
			fmt.Fprintf(&b, "(%d %s) ", k.Generation, shortPeer(k.Owner))
		}
		fmt.Fprintf(&b, "%v\n", err)
	}
	return b.String()
}

func (r *thiefRun) maxGeneration() uint64 {
	var g uint64
	for _, n := range r.nodes {
		n.view(func(l *generations.Ledger) {
			if c, ok := l.Current(); ok {
				g = max(g, c.Number)
			}
			if o, ok := l.Open(); ok {
				g = max(g, o.Number)
			}
		})
	}
	return g + 2
}

// checkErased: every envelope a store once held and no longer does is gone
// from every data directory, raw bytes, nonce and ciphertext alike. A
// delete returns once the store is rewritten, so this waits only for
// deletes still running.
func (r *thiefRun) checkErased(stage string) {
	r.t.Helper()
	r.rec.poll()
	var dirs []string
	for _, n := range append(slices.Clone(r.nodes), r.gone...) {
		dirs = append(dirs, n.cfg.DataDir)
	}
	var hits []string
	_ = testkit.Poll(5*time.Second, func() (bool, string) {
		if hits = r.rec.remnants(r.t, dirs); len(hits) == 0 {
			return true, ""
		}
		r.rec.poll()
		return false, ""
	}) // the remaining hits are the verdict
	if len(hits) > 0 {
		r.t.Errorf("%s: deleted envelopes still on disk:\n%s", stage, strings.Join(hits, "\n"))
	}
}

func shortPeer(p peer.ID) string {
	s := p.String()
	return s[len(s)-6:]
}

// thiefTargets is what the thief must never rebuild: every K any node held
// and every key a node released.
type thiefTargets struct {
	ks      [][]byte
	derived [][]byte
}

func (tg *thiefTargets) addK(k []byte) {
	if len(k) > 0 && !slices.ContainsFunc(tg.ks, func(x []byte) bool { return bytes.Equal(x, k) }) {
		tg.ks = append(tg.ks, bytes.Clone(k))
	}
}

func (tg *thiefTargets) addDerived(d []byte) {
	if len(d) > 0 && !slices.ContainsFunc(tg.derived, func(x []byte) bool { return bytes.Equal(x, d) }) {
		tg.derived = append(tg.derived, bytes.Clone(d))
	}
}

// haul is what the thief got out of one data directory.
type haul struct {
	dir        string
	live       bool // read while the node ran
	files      int
	size       int64
	anchors    int      // nonce+ciphertext records found (any owner, whole or fragment)
	parsed     int      // byte ranges that ParseEnvelope accepts
	viaStore   int      // envelopes listed by opening a copy of shares.db
	orphans    []string // envelope records whose nonce no stored envelope has
	shares     map[string]stolenShare
	clusterIDs []string
}

type stolenShare struct {
	split generations.SplitID
	gen   uint64
	share []byte
	where string
}

func (h *haul) String() string {
	gens := map[uint64]int{}
	for _, s := range h.shares {
		gens[s.gen]++
	}
	return fmt.Sprintf("%d files, %d bytes; %d envelope records, %d canonical, %d via the store; %d own envelopes opened (by generation %v)",
		h.files, h.size, h.anchors, h.parsed, h.viaStore, len(h.shares), gens)
}

// steal reads every file of dir as the thief would: it loads the identity
// key, finds every envelope or envelope fragment in the raw bytes (and in
// base64 or hex text), opens those the identity sealed, and also opens the
// store through the package's own API on a copy. known lists every peer ID
// the thief could have learnt (it takes them all), maxGen bounds the
// generations it tries when a fragment lacks its binding.
func steal(t *testing.T, dir string, live bool, known []peer.ID, maxGen uint64, clusterIDs []string) *haul {
	t.Helper()
	priv, err := p2p.LoadIdentity(filepath.Join(dir, "identity.key"))
	if err != nil {
		t.Fatalf("the thief cannot read the identity: %v", err)
	}
	self, _ := peer.IDFromPrivateKey(priv)
	h := &haul{dir: dir, live: live, shares: map[string]stolenShare{}}
	stored := map[string]bool{} // nonces of the envelopes the store holds
	if cf, err := readClusterFile(filepath.Join(dir, "cluster.json")); err == nil {
		clusterIDs = append(clusterIDs, cf.ClusterID)
	}
	var recs []envRecord
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if live && errors.Is(err, fs.ErrNotExist) {
				return nil // renamed away while we walked
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if live && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		h.files++
		h.size += int64(len(data))
		rel, _ := filepath.Rel(dir, path)
		for i, buf := range append([][]byte{data}, decodedRuns(data)...) {
			where := rel
			if i > 0 {
				where += " (decoded text)"
			}
			rs, parsed := scanEnvelopes(buf, where)
			recs = append(recs, rs...)
			h.parsed += parsed
		}
		if filepath.Base(path) == "shares.db" {
			h.viaStore += openStoreCopy(t, data, live, priv, self, h, stored)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the thief cannot read %s: %v", dir, err)
	}
	h.anchors = len(recs)
	for _, rec := range recs {
		if !stored[string(rec.nonce)] {
			h.orphans = append(h.orphans, fmt.Sprintf("%s: nonce %x", rec.where, rec.nonce[:6]))
		}
	}
	for _, rec := range recs {
		for _, b := range rec.bindings {
			if b.GetClusterId() != "" && !slices.Contains(clusterIDs, b.GetClusterId()) {
				clusterIDs = append(clusterIDs, b.GetClusterId())
			}
		}
	}
	h.clusterIDs = clusterIDs
	for _, rec := range recs {
		if _, ok := h.shares[string(rec.nonce)]; ok {
			continue
		}
		h.open(priv, self, rec, known, maxGen)
	}
	return h
}

// openStoreCopy opens a copy of a shares.db with the shares package, notes
// the nonce of every envelope it holds, and opens those of this node's own.
func openStoreCopy(t *testing.T, data []byte, live bool, priv crypto.PrivKey, self peer.ID, h *haul, stored map[string]bool) int {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shares.db")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := shares.OpenStore(p)
	if err != nil {
		if !live {
			t.Errorf("the thief cannot open a copy of a stopped node's shares.db: %v", err)
		}
		return 0
	}
	defer st.Close()
	keys, err := st.List()
	if err != nil {
		t.Errorf("list a copy of shares.db: %v", err)
		return 0
	}
	for _, k := range keys {
		env, err := st.Get(k.Generation, k.Owner)
		if err != nil {
			continue
		}
		stored[string(env.Nonce)] = true
		if k.Owner != self {
			continue
		}
		if share, b, err := shares.Open(priv, env); err == nil {
			h.shares[string(env.Nonce)] = stolenShare{split: b.Split, gen: b.Generation, share: share, where: "shares.db via the store API"}
		}
	}
	return len(keys)
}

// envRecord is a nonce and ciphertext found in a file, with whatever binding
// could be read around it.
type envRecord struct {
	where    string
	nonce    []byte
	ct       []byte
	split    []byte // when the split field follows the ciphertext
	bindings []*spb.Envelope
}

// Field tags of spb.Envelope (shares/pb/shares.proto) as the deterministic
// encoding writes them.
const (
	tagVersion    = 0x08 // field 1, varint
	tagClusterID  = 0x12 // field 2, bytes
	tagNonce      = 0x32 // field 6, bytes
	tagCiphertext = 0x3a // field 7, bytes
	tagSplit      = 0x42 // field 8, bytes
	nonceSize     = 24
)

// scanEnvelopes finds every nonce-then-ciphertext pair (the heart of an
// envelope, whatever surrounds it) and, for each, every earlier offset from
// which the bytes decode as an envelope with that nonce. It also counts the
// ranges ParseEnvelope accepts as they are.
func scanEnvelopes(data []byte, where string) ([]envRecord, int) {
	var recs []envRecord
	parsed := 0
	for i := 0; i+nonceSize+3 < len(data); i++ {
		if data[i] != tagNonce || data[i+1] != nonceSize || data[i+2+nonceSize] != tagCiphertext {
			continue
		}
		ctLen, n := protowire.ConsumeVarint(data[i+3+nonceSize:])
		if n < 0 || ctLen < 17 || ctLen > shares.MaxShareSize+16 {
			continue
		}
		ctStart := i + 3 + nonceSize + n
		end := ctStart + int(ctLen)
		if end > len(data) {
			continue
		}
		rec := envRecord{where: where, nonce: data[i+2 : i+2+nonceSize], ct: data[ctStart:end]}
		if end+2+generations.SplitSize <= len(data) && data[end] == tagSplit && data[end+1] == generations.SplitSize {
			rec.split = data[end+2 : end+2+generations.SplitSize]
			end += 2 + generations.SplitSize
		}
		for s := max(0, i-shares.MaxEnvelopeSize); s < i; s++ {
			if data[s] != tagVersion && data[s] != tagClusterID {
				continue
			}
			var m spb.Envelope
			if proto.Unmarshal(data[s:end], &m) != nil || !bytes.Equal(m.GetNonce(), rec.nonce) {
				continue
			}
			rec.bindings = append(rec.bindings, &m)
			if _, err := shares.ParseEnvelope(data[s:end]); err == nil {
				parsed++
			}
		}
		recs = append(recs, rec)
	}
	return recs, parsed
}

// open tries every binding found around rec, then every binding the thief
// can guess: its own ID as owner, any known peer as holder, any generation
// up to maxGen, the split that followed the ciphertext.
func (h *haul) open(priv crypto.PrivKey, self peer.ID, rec envRecord, known []peer.ID, maxGen uint64) {
	try := func(b shares.Binding, version uint32) bool {
		env := &shares.Envelope{Version: version, Binding: b, Nonce: rec.nonce, Ciphertext: rec.ct}
		share, got, err := shares.Open(priv, env)
		if err != nil {
			return false
		}
		h.shares[string(rec.nonce)] = stolenShare{split: got.Split, gen: got.Generation, share: share, where: rec.where}
		return true
	}
	for _, m := range rec.bindings {
		if len(m.GetSplit()) != generations.SplitSize {
			continue
		}
		b := shares.Binding{ClusterID: m.GetClusterId(), Owner: peer.ID(m.GetOwner()), Generation: m.GetGeneration(), Holder: peer.ID(m.GetHolder()), Split: generations.SplitID(m.GetSplit())}
		if try(b, m.GetVersion()) {
			return
		}
	}
	if len(rec.split) != generations.SplitSize {
		return
	}
	for _, m := range rec.bindings {
		if o := peer.ID(m.GetOwner()); o != self && o.Validate() == nil {
			return // another owner's envelope: no guess opens it
		}
	}
	for _, cid := range h.clusterIDs {
		for _, holder := range known {
			for g := uint64(0); g <= maxGen; g++ {
				b := shares.Binding{ClusterID: cid, Owner: self, Generation: g, Holder: holder, Split: generations.SplitID(rec.split)}
				if try(b, shares.EnvelopeVersion) {
					return
				}
			}
		}
	}
}

// rebuild tries to get K or a derived key out of the opened shares: each
// share on its own (a threshold-1 share would be K), every subset of each
// split, and every subset across splits.
func (h *haul) rebuild(tg *thiefTargets) (bool, string) {
	var all [][]byte
	groups := map[generations.SplitID][][]byte{}
	for _, s := range h.shares {
		if slices.ContainsFunc(all, func(x []byte) bool { return bytes.Equal(x, s.share) }) {
			continue
		}
		all = append(all, s.share)
		groups[s.split] = append(groups[s.split], s.share)
	}
	check := func(k []byte) bool {
		for _, want := range tg.ks {
			if bytes.Equal(k, want) {
				return true
			}
		}
		for _, cid := range h.clusterIDs {
			d, err := DeriveKey(k, cid, thiefPurpose)
			if err != nil {
				continue
			}
			for _, want := range tg.derived {
				if bytes.Equal(d, want) {
					return true
				}
			}
		}
		return false
	}
	for _, guess := range [][]byte{make([]byte, KeySize), bytes.Repeat([]byte{0xff}, KeySize)} {
		if check(guess) {
			return true, fmt.Sprintf("K is %x...: a guess, no share needed", guess[:4])
		}
	}
	for _, s := range all {
		for off := 0; off+KeySize <= len(s); off++ {
			if check(s[off : off+KeySize]) {
				return true, fmt.Sprintf("one share holds K at offset %d", off)
			}
		}
	}
	combine := func(set [][]byte) bool {
		k, err := shares.Combine(set)
		if err != nil {
			return false
		}
		defer clear(k)
		return check(k)
	}
	for id, g := range groups {
		if subsetWins(g, combine) {
			return true, fmt.Sprintf("%d shares of split %x combine", len(g), id[:4])
		}
	}
	if len(all) <= 14 && subsetWins(all, combine) {
		return true, "shares of different splits combine"
	}
	return false, ""
}

// subsetWins calls win on every subset of at least two items.
func subsetWins(items [][]byte, win func([][]byte) bool) bool {
	if len(items) > 16 {
		items = items[:16]
	}
	for mask := uint32(3); mask < 1<<len(items); mask++ {
		if bits.OnesCount32(mask) < 2 {
			continue
		}
		var set [][]byte
		for i := range items {
			if mask&(1<<i) != 0 {
				set = append(set, items[i])
			}
		}
		if win(set) {
			return true
		}
	}
	return false
}

// rawSecrets searches every file of dir for a target in raw, hex or base64
// form: what a brute force over every 32-byte window would find.
func rawSecrets(t *testing.T, dir string, tg *thiefTargets) []string {
	t.Helper()
	var hits []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for i, s := range append(slices.Clone(tg.ks), tg.derived...) {
			if bytes.Count(s, s[:1]) == len(s) {
				continue // a degenerate K is reported as such
			}
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s)[:40]), []byte(base64.RawURLEncoding.EncodeToString(s)[:40])} {
				if bytes.Contains(data, form) {
					hits = append(hits, fmt.Sprintf("%s: secret %d (%x) form %q", filepath.Base(path), i, s, form))
				}
			}
		}
		return nil
	})
	return hits
}

// decodedRuns decodes every long run of base64 or hex text in data, so
// envelopes written into JSON are found too.
func decodedRuns(data []byte) [][]byte {
	var out [][]byte
	isB64 := func(c byte) bool {
		return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_' || c == '='
	}
	for i := 0; i < len(data); {
		if !isB64(data[i]) {
			i++
			continue
		}
		j := i
		for j < len(data) && isB64(data[j]) {
			j++
		}
		if run := data[i:j]; len(run) >= 48 {
			s := strings.TrimRight(string(run), "=")
			// A run with neither '+' nor '/' (nor '-' nor '_') decodes the
			// same in both alphabets: keep one, or the thief counts every
			// envelope in it twice.
			var prev []byte
			for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
				if b, err := enc.DecodeString(s); err == nil && !bytes.Equal(b, prev) {
					out = append(out, b)
					prev = b
				}
			}
			if b, err := hex.DecodeString(string(run)); err == nil {
				out = append(out, b)
			}
		}
		i = j
	}
	return out
}

// envRecorder watches every node's store and remembers each envelope it
// ever held, so that once one is gone its bytes can be looked for.
type envRecorder struct {
	mu          sync.Mutex
	nodes       map[string]*Node               // data dir -> running node
	seen        map[string]map[string]recorded // data dir -> nonce -> envelope
	present     map[string]map[string]bool     // data dir -> nonces at the last poll
	deletedSeen map[string]bool
	stop        chan struct{}
	done        chan struct{}
}

type recorded struct {
	gen   uint64
	owner peer.ID
	env   *shares.Envelope
}

func newEnvRecorder() *envRecorder {
	return &envRecorder{nodes: map[string]*Node{}, seen: map[string]map[string]recorded{}, present: map[string]map[string]bool{}, deletedSeen: map[string]bool{}}
}

func (r *envRecorder) start(t *testing.T) {
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-tick.C:
				r.poll()
			}
		}
	}()
	t.Cleanup(func() { close(r.stop); <-r.done })
}

func (r *envRecorder) track(n *Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[n.cfg.DataDir] = n
}

// poll lists every running node's store. A closed store fails to list and
// keeps its last view.
func (r *envRecorder) poll() {
	r.mu.Lock()
	nodes := maps.Clone(r.nodes)
	r.mu.Unlock()
	for dir, n := range nodes {
		keys, err := n.store.List()
		if err != nil {
			continue
		}
		now := map[string]bool{}
		got := map[string]recorded{}
		failed := false
		for _, k := range keys {
			env, err := n.store.Get(k.Generation, k.Owner)
			if err != nil {
				if !errors.Is(err, shares.ErrNotFound) {
					failed = true
				}
				continue
			}
			now[string(env.Nonce)] = true
			got[string(env.Nonce)] = recorded{gen: k.Generation, owner: k.Owner, env: env}
		}
		if failed {
			continue // closed under us: keep the last view
		}
		r.mu.Lock()
		if r.seen[dir] == nil {
			r.seen[dir] = map[string]recorded{}
		}
		maps.Copy(r.seen[dir], got)
		r.present[dir] = now
		r.mu.Unlock()
	}
}

// remnants returns where, in the files of dirs, any envelope that a store
// held and no longer holds still has its nonce, its ciphertext or its
// encoding.
func (r *envRecorder) remnants(t *testing.T, dirs []string) []string {
	t.Helper()
	type fp struct {
		what string
		b    []byte
	}
	index := map[uint64][]fp{}
	r.mu.Lock()
	for dir, seen := range r.seen {
		for nonce, rec := range seen {
			if r.present[dir][nonce] {
				continue
			}
			r.deletedSeen[dir+"/"+nonce] = true
			name := fmt.Sprintf("envelope (generation %d, owner %s) deleted from %s", rec.gen, shortPeer(rec.owner), filepath.Base(dir))
			for _, f := range []fp{{name + ": nonce", rec.env.Nonce}, {name + ": ciphertext", rec.env.Ciphertext}} {
				key := binary.LittleEndian.Uint64(f.b)
				index[key] = append(index[key], f)
			}
		}
	}
	r.mu.Unlock()
	if len(index) == 0 {
		return nil
	}
	var hits []string
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			for i := 0; i+8 <= len(data); i++ {
				key := binary.LittleEndian.Uint64(data[i:])
				if key == 0 {
					continue
				}
				for _, f := range index[key] {
					if bytes.HasPrefix(data[i:], f.b) {
						hits = append(hits, fmt.Sprintf("  %s: at %s offset %d", f.what, path, i))
					}
				}
			}
			return nil
		})
	}
	return hits
}

// fieldOffset is where field num (its tag) starts in the top level of a
// protobuf message. Searching for the tag's bytes instead would sometimes
// find them inside an earlier field's random bytes.
func fieldOffset(t *testing.T, msg []byte, num protowire.Number) int {
	t.Helper()
	for off := 0; off < len(msg); {
		n, typ, tagLen := protowire.ConsumeTag(msg[off:])
		if tagLen < 0 {
			t.Fatalf("bad tag at %d", off)
		}
		if n == num {
			return off
		}
		valLen := protowire.ConsumeFieldValue(n, typ, msg[off+tagLen:])
		if valLen < 0 {
			t.Fatalf("bad field %d at %d", n, off)
		}
		off += tagLen + valLen
	}
	t.Fatalf("no field %d", num)
	return 0
}
