package generations

import (
	"bytes"
	"crypto/ed25519"
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

func isTestKey(tb testing.TB, id peer.ID) bool {
	for _, k := range keys(tb, 128) {
		if k.id == id {
			return true
		}
	}
	return false
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

func inviteSecret(i int) []byte { return []byte(fmt.Sprintf("invite-secret-%d", i)) }

func inviteHash(i int) []byte {
	h := sha256.Sum256(inviteSecret(i))
	return h[:]
}

// invitePub is the invite key of invite i (see InviteKey).
func invitePub(i int) []byte {
	pub, _, err := InviteKey(inviteSecret(i))
	if err != nil {
		panic(err)
	}
	return pub
}

// testSplit is the split every test receipt belongs to unless a test says
// otherwise.
var testSplit = SplitID{0x5e, 1}

// invitePrivByHash finds the invite key of a test invite by its hash.
func invitePrivByHash(hash []byte) (ed25519.PrivateKey, bool) {
	for i := 0; i < 4096; i++ {
		if bytes.Equal(inviteHash(i), hash) {
			_, priv, _ := InviteKey(inviteSecret(i))
			return priv, true
		}
	}
	return nil, false
}

// signed makes a valid receipt by holder's key.
func signed(tb testing.TB, cluster string, gen uint64, owner, holder peer.ID, digest []byte) Receipt {
	tb.Helper()
	return signedSplit(tb, cluster, gen, owner, holder, testSplit, digest)
}

// signedSplit is signed for a given split.
func signedSplit(tb testing.TB, cluster string, gen uint64, owner, holder peer.ID, split SplitID, digest []byte) Receipt {
	tb.Helper()
	sig, err := keyOf(tb, holder).Sign(ReceiptMessage(cluster, gen, owner, holder, split, digest))
	if err != nil {
		tb.Fatal(err)
	}
	return Receipt{Generation: gen, Owner: owner, Holder: holder, Split: split, Digest: digest, Signature: sig}
}

// harness drives a ledger through encoded commands and keeps the log of
// every command it sent (applied or not), with the leader stamp of each.
//
// It signs every command as its natural author (the peer the command acts
// for: the issuer, the joiner, the receipts' owner, the leaving peer, ...)
// or, for commands that act for the cluster, as h.author (the founder
// unless a test sets it), and proves ConsumeInvites of test invites. The
// leader stamp is the command's issued_at, so tests keep controlling time
// through the constructors' now argument.
type harness struct {
	tb     testing.TB
	l      *Ledger
	now    time.Time
	log    []stamped
	author peer.ID
	seq    map[peer.ID]uint64
	// raw applies commands exactly as given: no signing, no proof.
	raw bool
}

// stamped is one log entry: a leader stamp and an encoded command.
type stamped struct {
	now int64
	cmd []byte
}

func newHarness(tb testing.TB) *harness {
	return &harness{tb: tb, l: New(), now: t0, seq: map[peer.ID]uint64{}}
}

// sign makes author the author of cmd with its next sequence number.
func (h *harness) sign(cmd *pb.Command, author peer.ID) {
	h.tb.Helper()
	cluster := h.l.ClusterID()
	if b := cmd.GetBootstrap(); b != nil && cluster == "" {
		cluster = b.GetClusterId()
	}
	if ci := cmd.GetConsumeInvite(); ci != nil && len(ci.GetProof()) == 0 {
		if priv, ok := invitePrivByHash(ci.GetHash()); ok {
			if err := ProveInvite(cmd, ci.GetClusterId(), priv); err != nil {
				h.tb.Fatal(err)
			}
		} else {
			ci.Proof = make([]byte, 64)
		}
	}
	h.seq[author]++
	if err := Sign(cmd, keyOf(h.tb, author), cluster, h.seq[author]); err != nil {
		h.tb.Fatal(err)
	}
}

// naturalAuthor is the peer cmd acts for (when it is a test key), or
// h.author.
func (h *harness) naturalAuthor(cmd *pb.Command) peer.ID {
	if subs := subjects(cmd); len(subs) > 0 && isTestKey(h.tb, peer.ID(subs[0])) {
		return peer.ID(subs[0])
	}
	if h.author != "" {
		return h.author
	}
	if a := h.l.Active(); len(a) > 0 {
		return a[0]
	}
	return keys(h.tb, 1)[0].id
}

// applyAs signs cmd as author and applies it.
func (h *harness) applyAs(author peer.ID, cmd *pb.Command) (Result, error) {
	h.tb.Helper()
	h.sign(cmd, author)
	return h.applySigned(cmd)
}

func (h *harness) applySigned(cmd *pb.Command) (Result, error) {
	h.tb.Helper()
	b, err := EncodeCommand(cmd)
	if err != nil {
		return Result{}, err
	}
	h.log = append(h.log, stamped{cmd.GetIssuedAt(), b})
	return h.l.Apply(cmd.GetIssuedAt(), b)
}

func (h *harness) tick() time.Time {
	h.now = h.now.Add(time.Second)
	return h.now
}

func (h *harness) apply(cmd *pb.Command) (Result, error) {
	h.tb.Helper()
	if h.raw {
		return h.applySigned(cmd)
	}
	rr := cmd.GetRecordReceipts()
	if rr == nil || len(rr.GetReceipts()) == 0 {
		return h.applyAs(h.naturalAuthor(cmd), cmd)
	}
	// Receipts are recorded by their owner: a batch of several owners
	// becomes one command per owner, in order of first appearance.
	var owners []peer.ID
	groups := map[peer.ID][]*pb.Receipt{}
	for _, r := range rr.GetReceipts() {
		o := peer.ID(r.GetOwner())
		if _, ok := groups[o]; !ok {
			owners = append(owners, o)
		}
		groups[o] = append(groups[o], r)
	}
	if len(owners) == 1 {
		return h.applyAs(owners[0], cmd)
	}
	var total Result
	for _, o := range owners {
		c := newCommand(fromNanos(cmd.GetIssuedAt()))
		c.Body = &pb.Command_RecordReceipts{RecordReceipts: &pb.RecordReceipts{Receipts: groups[o]}}
		res, err := h.applyAs(o, c)
		if err != nil {
			return total, err
		}
		total = mergeResults(total, res)
	}
	return total, nil
}

// mergeResults adds the effects of b to a (for batches the harness split).
func mergeResults(a, b Result) Result {
	a.Recorded += b.Recorded
	a.Duplicates += b.Duplicates
	a.Replaced += b.Replaced
	if b.Committed != 0 {
		a.Committed = b.Committed
	}
	if b.Opened != 0 {
		a.Opened = b.Opened
	}
	a.Retired = append(a.Retired, b.Retired...)
	a.Admitted = append(a.Admitted, b.Admitted...)
	a.Lapsed = append(a.Lapsed, b.Lapsed...)
	return a
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
		h.must(NewAddInvite(inviteHash(i), invitePub(i), h.now.Add(time.Hour), ids[0], h.tick()))
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
