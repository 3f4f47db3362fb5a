package node

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/shares"
)

// waitUnlocked waits until every node is unlocked.
func waitUnlocked(t testing.TB, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, "node "+n.ID().String()+" to unlock", 30*time.Second, func() bool {
			state, _ := n.LockState()
			return state == LockUnlocked
		})
	}
}

// waitFullCoverage waits until every member of nodes[0]'s ledger is escrowed
// in the current generation with every share held.
func waitFullCoverage(t testing.TB, nodes []*Node) {
	t.Helper()
	waitFor(t, "full coverage of every owner", 30*time.Second, func() bool {
		for _, n := range nodes {
			st := n.Status()
			if st.Generation.Current == nil || st.Generation.Open != nil {
				return false
			}
			for _, m := range st.Members {
				if m.EscrowGeneration == nil || *m.EscrowGeneration != *st.Generation.Current || m.SharesHeld != len(nodes) {
					return false
				}
			}
		}
		return true
	})
}

func mustKey(t testing.TB, n *Node, purpose string) []byte {
	t.Helper()
	k, err := n.Key(ctxT(t, 30*time.Second), purpose, true)
	if err != nil {
		t.Fatalf("key of %s: %v", n.ID(), err)
	}
	return k
}

// restart closes n and starts it again from its data directory.
func restart(t testing.TB, n *Node) *Node {
	t.Helper()
	cfg := n.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	n.Close()
	return startNode(t, cfg)
}

// Acceptance 1 and 2 (shares issue): a 5-node cluster escrows every member
// in the current generation with 5 shares held and threshold 3; a restarted
// node is locked, unlocks, and derives the same keys.
func TestEscrowAndUnlockAfterRestart(t *testing.T) {
	nodes := testCluster(t, 5)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	for _, m := range nodes[0].Status().Members {
		if m.SharesHeld != 5 || m.Threshold != 3 {
			t.Fatalf("member %s: shares_held %d threshold %d, want 5 and 3", m.PeerID, m.SharesHeld, m.Threshold)
		}
	}
	before := mustKey(t, nodes[2], "x")
	if other := mustKey(t, nodes[2], "y"); bytes.Equal(before, other) {
		t.Fatal("two purposes gave the same key")
	}

	cfg := nodes[2].cfg
	cfg.Bootstrap, cfg.Join = false, ""
	nodes[2].Close()
	again, err := Start(ctxT(t, 30*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	// Locked right after the restart: K is not on disk.
	if state, _ := again.LockState(); state != LockLocked {
		t.Fatalf("restarted node is %s, want locked", state)
	}
	if _, err := again.Key(ctxT(t, time.Second), "x", false); !errors.Is(err, ErrLocked) {
		t.Fatalf("key while locked: %v, want ErrLocked", err)
	}
	waitUnlocked(t, again)
	if after := mustKey(t, again, "x"); !bytes.Equal(before, after) {
		t.Fatalf("derived key changed across a restart")
	}
	// Once its ledger has caught up it reports its full coverage.
	waitFor(t, "the restarted node to report its coverage", 10*time.Second, func() bool {
		_, p := again.LockState()
		return p.Need == 3 && p.Have == 5
	})
}

// Acceptance 3: with 2 of 5 stopped a restarted node unlocks; with 3 of 5
// stopped it stays locked and says it has fewer than 3 shares.
func TestUnlockNeedsThreshold(t *testing.T) {
	nodes := testCluster(t, 5)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	want := mustKey(t, nodes[4], "app")

	nodes[0].Close()
	nodes[1].Close()
	n4 := restart(t, nodes[4])
	waitUnlocked(t, n4)
	if got := mustKey(t, n4, "app"); !bytes.Equal(got, want) {
		t.Fatal("derived key changed")
	}

	nodes[2].Close() // now 0, 1, 2 are down: 3 of 5 stopped
	n4 = restart(t, n4)
	waitFor(t, "an unlock attempt to report its shortfall", 60*time.Second, func() bool {
		_, p := n4.LockState()
		return strings.Contains(p.Reason, "fewer than the threshold")
	})
	state, p := n4.LockState()
	if state != LockLocked || p.Have >= 3 || p.Need != 3 {
		t.Fatalf("with 3 of 5 stopped: state %s, progress %+v", state, p)
	}
	if _, err := n4.Key(ctxT(t, time.Second), "app", false); !errors.Is(err, ErrLocked) || !testkit.ErrorSays(err, "of 3 shares") {
		t.Fatalf("key with 3 of 5 stopped: %v", err)
	}
}

// Acceptance 4: no data directory holds K, a share, an envelope's plaintext,
// or a derived key, in raw, hex or base64 form, after the cluster comes up
// and after restarts.
func TestNoKeyMaterialOnDisk(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	nodes[1] = restart(t, nodes[1])
	waitUnlocked(t, nodes...)

	var secrets [][]byte
	for _, n := range nodes {
		k := n.keys.get()
		if len(k) != KeySize {
			t.Fatalf("test hook: node %s has no K", n.ID())
		}
		secrets = append(secrets, k)
		for _, purpose := range []string{"x", "disk", agePurposeForTest} {
			secrets = append(secrets, mustKey(t, n, purpose))
		}
	}
	// Every envelope any holder keeps, opened with its owner's key: these
	// plaintexts (split ID and share) must not be on disk either.
	privs := map[peer.ID]*Node{}
	for _, n := range nodes {
		privs[n.ID()] = n
	}
	opened := 0
	for _, holder := range nodes {
		keys, err := holder.store.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range keys {
			env, err := holder.store.Get(key.Generation, key.Owner)
			if err != nil {
				t.Fatal(err)
			}
			owner := privs[key.Owner]
			if owner == nil {
				continue
			}
			plain, _, err := shares.Open(owner.priv, env)
			if err != nil {
				t.Fatalf("open envelope (%d, %s) held by %s: %v", key.Generation, key.Owner, holder.ID(), err)
			}
			secrets = append(secrets, plain, plain[splitIDSize:])
			opened++
		}
	}
	if opened < len(nodes)*len(nodes) {
		t.Fatalf("opened %d envelopes, want at least %d", opened, len(nodes)*len(nodes))
	}
	for _, n := range nodes {
		n.Close() // flush everything to disk before searching
	}
	for _, n := range nodes {
		searchDir(t, n.cfg.DataDir, secrets)
	}
}

const agePurposeForTest = "p2pkey/age/v1"

func searchDir(t *testing.T, dir string, secrets [][]byte) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(strings.ToUpper(hex.EncodeToString(s))),
				[]byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawURLEncoding.EncodeToString(s))} {
				if bytes.Contains(data, form) {
					t.Errorf("%s contains key material (%d bytes, form %.12s...)", path, len(s), form)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 4 {
		t.Fatalf("searched only %d files in %s", files, dir)
	}
}

// Acceptance 5: a joiner whose share pushes are dropped is not admitted; its
// generation aborts, the previous one stays current, and the joiner is told
// what was missing.
func TestJoinGateAbortsWhenPushesAreDropped(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bootstrap = true
	cfg.GenerationTimeout = 3 * time.Second
	a := startNode(t, cfg)
	b := joinNodeWith(t, a, func(c *Config) { c.GenerationTimeout = 3 * time.Second })
	waitUnlocked(t, a, b)
	waitFullCoverage(t, []*Node{a, b})
	var curBefore uint64
	a.view(func(l *generations.Ledger) { g, _ := l.Current(); curBefore = g.Number })

	issued, err := a.Invite(ctxT(t, 10*time.Second), time.Hour)
	tok := issued.Token
	if err != nil {
		t.Fatal(err)
	}
	jcfg := testConfig(t)
	jcfg.Join = tok
	jcfg.setHooks(&testHooks{dropPush: func(holder peer.ID) bool { return true }})
	j, err := Start(ctxT(t, 60*time.Second), jcfg)
	if err == nil {
		j.Close()
		t.Fatal("a joiner whose pushes were all dropped was admitted")
	}
	if !errors.Is(err, ErrJoinRejected) || !testkit.ErrorSays(err, "holders acknowledged") {
		t.Fatalf("join error %q does not say what was missing", err)
	}
	t.Logf("joiner was told: %v", err)
	a.view(func(l *generations.Ledger) {
		cur, _ := l.Current()
		if cur.Number != curBefore {
			t.Errorf("current generation moved from %d to %d", curBefore, cur.Number)
		}
		if _, open := l.Open(); open {
			t.Error("a generation is still open")
		}
		if len(l.Active()) != 2 {
			t.Errorf("active members: %v", l.Active())
		}
		aborted := false
		for _, g := range l.Generations() {
			aborted = aborted || g.State == generations.StateAborted
		}
		if !aborted {
			t.Error("no generation was aborted")
		}
	})
	// The joiner left no cluster state behind, so a fresh invite can work.
	if _, err := os.Stat(jcfg.raftDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rejected joiner kept Raft state: %v", err)
	}
}

func joinNodeWith(t testing.TB, via *Node, edit func(*Config)) *Node {
	t.Helper()
	issued, err := via.Invite(ctxT(t, 10*time.Second), time.Hour)
	tok := issued.Token
	if err != nil {
		t.Fatalf("invite: %v", err)
	}
	cfg := testConfig(t)
	cfg.Join = tok
	edit(&cfg)
	return startNode(t, cfg)
}

// Acceptance 6 at the node level, with the ledger-backed policy: a removed
// owner cannot fetch, a push for a generation that is not open is refused,
// and a second, different push for the same (generation, owner, holder) is
// refused.
func TestSharePolicyRefusals(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	a, b, c := nodes[0], nodes[1], nodes[2]
	var cur uint64
	a.view(func(l *generations.Ledger) { g, _ := l.Current(); cur = g.Number })
	cluster := a.ClusterID()

	// A push for a generation that is not open.
	parts, err := shares.Split(make([]byte, 32), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	env, err := shares.Seal(a.priv, shares.Binding{ClusterID: cluster, Owner: a.ID(), Generation: cur + 7, Holder: b.ID(), Split: shares.NewSplitID()}, parts[0], rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Push(ctxT(t, 5*time.Second), b.ID(), env); !errors.Is(err, shares.ErrGenerationNotOpen) {
		t.Fatalf("push for a generation that is not open: %v", err)
	}
	// An envelope of another split for (current, a, b), while a is escrowed
	// in current with its first split: the holder keeps the escrowed one.
	env2, _ := shares.Seal(a.priv, shares.Binding{ClusterID: cluster, Owner: a.ID(), Generation: cur, Holder: b.ID(), Split: shares.NewSplitID()}, parts[1], rand.Reader)
	if _, err := a.svc.Push(ctxT(t, 5*time.Second), b.ID(), env2); !errors.Is(err, shares.ErrDuplicate) {
		t.Fatalf("second push: %v", err)
	}
	// The owner can fetch its envelope; after removal it cannot.
	if _, err := c.svc.Fetch(ctxT(t, 5*time.Second), b.ID(), cur); err != nil {
		t.Fatalf("owner fetch before removal: %v", err)
	}
	removeByMajority(t, c.ID(), a, b)
	waitFor(t, "b to see c removed", 10*time.Second, func() bool { return b.memberStatus(c.ID()) == generations.StatusRemoved })
	_, err = c.svc.Fetch(ctxT(t, 5*time.Second), b.ID(), cur)
	if !errors.Is(err, shares.ErrOwnerRemoved) && !errors.Is(err, shares.ErrNotFound) {
		t.Fatalf("removed owner fetch: %v, want ErrOwnerRemoved or ErrNotFound", err)
	}
	// Holders delete the removed owner's envelopes.
	waitFor(t, "holders to delete the removed owner's envelopes", 10*time.Second, func() bool {
		for _, h := range []*Node{a, b} {
			keys, _ := h.store.List()
			for _, k := range keys {
				if k.Owner == c.ID() {
					return false
				}
			}
		}
		return true
	})
}
