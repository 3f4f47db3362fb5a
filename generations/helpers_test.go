package generations

import (
	"crypto/sha256"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations/pb"
)

const testCluster = "0123456789abcdef0123456789abcdef"

var t0 = time.Unix(1_700_000_000, 0).UTC()

type testKey struct {
	priv crypto.PrivKey
	id   peer.ID
}

var (
	keyPoolOnce sync.Once
	keyPool     []testKey
)

// keys returns n deterministic Ed25519 identities, sorted by peer ID.
func keys(tb testing.TB, n int) []testKey {
	tb.Helper()
	keyPoolOnce.Do(func() {
		r := rand.New(rand.NewSource(42))
		for i := 0; i < 128; i++ {
			priv, _, err := crypto.GenerateEd25519Key(r)
			if err != nil {
				panic(err)
			}
			id, err := peer.IDFromPrivateKey(priv)
			if err != nil {
				panic(err)
			}
			keyPool = append(keyPool, testKey{priv, id})
		}
	})
	if n > len(keyPool) {
		tb.Fatalf("key pool has %d keys", len(keyPool))
	}
	return keyPool[:n]
}

func keyOf(tb testing.TB, id peer.ID) crypto.PrivKey {
	for _, k := range keys(tb, 128) {
		if k.id == id {
			return k.priv
		}
	}
	tb.Fatalf("no key for %s", id)
	return nil
}

func digestOf(gen uint64, owner, holder peer.ID) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("envelope/%d/%s/%s", gen, owner, holder)))
	return h[:]
}

func inviteHash(i int) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("invite-secret-%d", i)))
	return h[:]
}

// signed makes a valid receipt by holder's key.
func signed(tb testing.TB, cluster string, gen uint64, owner, holder peer.ID, digest []byte) Receipt {
	tb.Helper()
	sig, err := keyOf(tb, holder).Sign(ReceiptMessage(cluster, gen, owner, holder, SplitID{}, digest))
	if err != nil {
		tb.Fatal(err)
	}
	return Receipt{Generation: gen, Owner: owner, Holder: holder, Digest: digest, Signature: sig}
}

// harness drives a ledger through encoded commands and keeps the log of
// every command it sent (applied or not).
type harness struct {
	tb  testing.TB
	l   *Ledger
	now time.Time
	log [][]byte
}

func newHarness(tb testing.TB) *harness {
	return &harness{tb: tb, l: New(), now: t0}
}

func (h *harness) tick() time.Time {
	h.now = h.now.Add(time.Second)
	return h.now
}

func (h *harness) apply(cmd *pb.Command) (Result, error) {
	h.tb.Helper()
	b, err := EncodeCommand(cmd)
	if err != nil {
		return Result{}, err
	}
	h.log = append(h.log, b)
	return h.l.Apply(b)
}

func (h *harness) must(cmd *pb.Command) Result {
	h.tb.Helper()
	res, err := h.apply(cmd)
	if err != nil {
		h.tb.Fatalf("apply: %v", err)
	}
	return res
}

// fullReceipts returns every receipt (owner × holder) of generation gen for
// the given members.
func (h *harness) fullReceipts(gen uint64, members []peer.ID) []Receipt {
	var rs []Receipt
	for _, o := range members {
		for _, hd := range members {
			rs = append(rs, signed(h.tb, h.l.ClusterID(), gen, o, hd, digestOf(gen, o, hd)))
		}
	}
	return rs
}

// cluster bootstraps n members (direct admission) and commits generation 1
// with every receipt.
func cluster(tb testing.TB, n int) (*harness, []peer.ID) {
	tb.Helper()
	return clusterWith(tb, n, 0)
}

// clusterWith is cluster with the retention bound maxBehind (0: default).
func clusterWith(tb testing.TB, n int, maxBehind uint32) (*harness, []peer.ID) {
	tb.Helper()
	h := newHarness(tb)
	ks := keys(tb, n)
	ids := make([]peer.ID, n)
	for i, k := range ks {
		ids[i] = k.id
	}
	h.must(NewBootstrapWithRetention(testCluster, ids[0], maxBehind, h.tick()))
	for i := 1; i < n; i++ {
		h.must(NewAddInvite(inviteHash(i), h.now.Add(time.Hour), ids[0], h.tick()))
		h.must(NewConsumeInvite(inviteHash(i), ids[i], testCluster, time.Time{}, h.tick()))
	}
	res := h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
	if res.Opened != 1 {
		tb.Fatalf("opened %d", res.Opened)
	}
	res = h.must(NewRecordReceipts(h.fullReceipts(1, h.l.Active()), h.tick()))
	if res.Committed != 1 {
		tb.Fatalf("generation 1 not committed: %+v", res)
	}
	return h, h.l.Active()
}
