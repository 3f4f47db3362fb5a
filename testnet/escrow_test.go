package testnet

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/shares"
	bolt "go.etcd.io/bbolt"
)

// The escrow invariant: "escrowed" means "recoverable" (issue 12).
//
// For every active owner, the ledger names its escrow generation g, its
// threshold t and the holders with a recorded receipt. The checker reads
// the envelopes those holders really keep (a copy of each holder's
// shares.db, taken while its daemon runs or after it died), opens them with
// the owner's identity key, groups them by split, and requires one split
// whose envelopes number at least max(t, shares_held) and of which every
// t-subset combines to a K whose derived key is the one the owner's
// `p2pkey key --purpose chaos` printed. So the ledger's count is a promise
// the holders can keep: the owner can lose any shares_held-t of them.
// Neither K nor a share is ever printed: messages carry counts and node
// numbers only.

// shareSize is the size of one share of K as shares.Split makes it: the
// scheme byte, a Shamir part of len(K) bytes and its x coordinate. What
// precedes it in an envelope's plaintext (the split ID of older builds) is
// part of the split's identity.
const shareSize = node.KeySize + 2

// storeSnapshot is the envelopes in one holder's store.
type storeSnapshot map[shares.Key]*shares.Envelope

// readStore returns the envelopes of the shares.db in data directory dir
// (nil if there is none: its disk was lost). The daemon holds the file's
// lock, so the checker reads a copy: two reads that agree byte for byte,
// checked by bbolt read-only, then opened with the shares package. A torn
// copy (a write between the reads) is retried.
func readStore(dir string) (storeSnapshot, error) {
	src := filepath.Join(dir, "shares.db")
	tmp, err := os.MkdirTemp("", "escrow")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var last error
	for try := range 20 {
		a, err := os.ReadFile(src)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(src)
		if err != nil || !bytes.Equal(a, b) {
			last = fmt.Errorf("%s changed while being copied", src)
			continue
		}
		dst := filepath.Join(tmp, fmt.Sprintf("copy%d.db", try))
		if err := os.WriteFile(dst, a, 0o600); err != nil {
			return nil, err
		}
		snap, err := readStoreCopy(dst)
		if err == nil {
			return snap, nil
		}
		last = err
		time.Sleep(20 * time.Millisecond) // let the writer finish before the next copy
	}
	return nil, fmt.Errorf("no consistent copy of %s: %v", src, last)
}

func readStoreCopy(path string) (storeSnapshot, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	err = db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() { // drained: the checker reads the mmap until it closes
			if first == nil {
				first = err
			}
		}
		return first
	})
	db.Close()
	if err != nil {
		return nil, fmt.Errorf("bbolt check: %w", err)
	}
	st, err := shares.OpenStore(path)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	keys, err := st.List()
	if err != nil {
		return nil, err
	}
	snap := storeSnapshot{}
	for _, k := range keys {
		env, err := st.Get(k.Generation, k.Owner)
		if err != nil {
			return nil, err
		}
		snap[k] = env
	}
	return snap, nil
}

// splitTag names the split an opened envelope belongs to: the split ID its
// binding carries, and whatever precedes the share in the plaintext (the
// split ID of builds before envelope v2; nothing since). It is a digest,
// short and safe to print.
func splitTag(env *shares.Envelope, plain []byte) string {
	h := sha256.New()
	h.Write(env.Binding.Split[:])
	h.Write(plain[:len(plain)-shareSize])
	return hex.EncodeToString(h.Sum(nil)[:4])
}

// checkEscrow checks the escrow invariant for every active owner in st (one
// node's status) against gens (the same node's generations).
func (c *tnet) checkEscrow(st node.Status, gens []node.GenerationInfo) error {
	byNum := map[uint64]*node.GenerationInfo{}
	for k := range gens {
		byNum[gens[k].Number] = &gens[k]
	}
	stores := map[int]storeSnapshot{}
	load := func(n *tnode) (storeSnapshot, error) {
		if s, ok := stores[n.i]; ok {
			return s, nil
		}
		s, err := readStore(n.dir)
		if err != nil {
			return nil, err
		}
		stores[n.i] = s
		return s, nil
	}
	var problems []string
	for _, m := range st.Members {
		if m.Status != "active" {
			continue
		}
		owner := c.byPeer(m.PeerID)
		if owner == nil {
			problems = append(problems, fmt.Sprintf("active member %s is no node of this testnet", m.PeerID))
			continue
		}
		if err := c.checkOwner(owner, m, byNum, st.ClusterID, load); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("escrow invariant: %s", strings.Join(problems, "; "))
	}
	return nil
}

func (c *tnet) checkOwner(owner *tnode, m node.MemberInfo, byNum map[uint64]*node.GenerationInfo, clusterID string, load func(*tnode) (storeSnapshot, error)) error {
	if m.EscrowGeneration == nil {
		return fmt.Errorf("node %d is escrowed in no committed generation", owner.i)
	}
	gen, t, held := *m.EscrowGeneration, m.Threshold, m.SharesHeld
	g := byNum[gen]
	if g == nil || len(g.Matrix) == 0 {
		return fmt.Errorf("node %d: its escrow generation %d has no holder matrix", owner.i, gen)
	}
	row := slices.Index(g.Members, owner.peer.String())
	if row < 0 || row >= len(g.Matrix) {
		return fmt.Errorf("node %d is not in its escrow generation %d", owner.i, gen)
	}
	if owner.key == "" {
		return fmt.Errorf("node %d: no derived key seen yet to compare", owner.i)
	}
	groups := map[string][][]byte{}
	defer func() {
		for _, g := range groups {
			for _, s := range g {
				clear(s)
			}
		}
	}()
	var recorded, missing, bad []string
	for j, has := range g.Matrix[row] {
		if !has {
			continue
		}
		h := c.byPeer(g.Members[j])
		if h == nil {
			bad = append(bad, "holder "+g.Members[j]+" is no node of this testnet")
			continue
		}
		recorded = append(recorded, fmt.Sprint(h.i))
		snap, err := load(h)
		if err != nil {
			return fmt.Errorf("node %d: store of holder node %d: %v", owner.i, h.i, err)
		}
		env := snap[shares.Key{Generation: gen, Owner: owner.peer}]
		if env == nil {
			missing = append(missing, fmt.Sprint(h.i))
			continue
		}
		plain, b, err := shares.Open(owner.priv, env)
		if err != nil {
			bad = append(bad, fmt.Sprintf("node %d's envelope does not open (%v)", h.i, err))
			continue
		}
		if b.ClusterID != clusterID || b.Owner != owner.peer || b.Generation != gen || b.Holder != h.peer || len(plain) < shareSize {
			clear(plain)
			bad = append(bad, fmt.Sprintf("node %d's envelope is bound elsewhere or malformed", h.i))
			continue
		}
		tag := splitTag(env, plain)
		groups[tag] = append(groups[tag], bytes.Clone(plain[len(plain)-shareSize:]))
		clear(plain)
	}
	best, found := 0, []string{}
	for tag, sh := range groups {
		var verdict string
		switch {
		case len(sh) < t:
			verdict = "fewer than the threshold"
		case everySubsetGives(sh, t, clusterID, owner.key):
			verdict = fmt.Sprintf("any %d give the key back", t)
			best = max(best, len(sh))
		default:
			verdict = fmt.Sprintf("some %d do NOT give the key back", t)
		}
		found = append(found, fmt.Sprintf("split %s: %d envelopes, %s", tag, len(sh), verdict))
	}
	slices.Sort(found)
	if len(missing) > 0 {
		found = append(found, "no envelope at nodes "+strings.Join(missing, " "))
	}
	found = append(found, bad...)
	if need := max(t, held); best < need {
		return fmt.Errorf("node %d, generation %d: the ledger counts %d shares (threshold %d) at nodes [%s], "+
			"but they keep only %d envelopes of one split that give its key back (%s)",
			owner.i, gen, held, t, strings.Join(recorded, " "), best, strings.Join(found, "; "))
	}
	return nil
}

// everySubsetGives reports whether every t-subset of the shares combines
// to a K whose derived key (purpose chaos) is want, in hex.
func everySubsetGives(sh [][]byte, t int, clusterID, want string) bool {
	ok := true
	subsets(len(sh), t, func(idx []int) bool {
		pick := make([][]byte, len(idx))
		for k, i := range idx {
			pick[k] = sh[i]
		}
		k, err := shares.Combine(pick)
		if err != nil {
			ok = false
			return false
		}
		d, err := node.DeriveKey(k, clusterID, chaosPurpose)
		clear(k)
		if err != nil || hex.EncodeToString(d) != want {
			ok = false
		}
		clear(d)
		return ok
	})
	return ok
}

// subsets calls f with every k-subset of {0..n-1}, in lexicographic order,
// until f returns false.
func subsets(n, k int, f func([]int) bool) {
	if k > n || k <= 0 {
		return
	}
	idx := make([]int, k)
	for i := range idx {
		idx[i] = i
	}
	for {
		if !f(idx) {
			return
		}
		i := k - 1
		for i >= 0 && idx[i] == n-k+i {
			i--
		}
		if i < 0 {
			return
		}
		idx[i]++
		for j := i + 1; j < k; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
}
