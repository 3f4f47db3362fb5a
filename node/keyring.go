package node

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// keyring holds K in memory, and only in memory (rule K1). A nil k means the
// node is locked.
type keyring struct {
	mu     sync.Mutex
	k      []byte
	splits map[uint64]*split
	// made lists the generations this process split K for (the splits
	// themselves are dropped once shared).
	made     map[uint64]generations.SplitID
	progress UnlockProgress
	changed  chan struct{} // closed and replaced when k or progress changes
	// gathered is the generation whose shares k was rebuilt from (a
	// threshold of one split, key-checked when the ledger had a check), 0
	// if k was made here: escrowed in it by construction, whether or not
	// this node's ledger has caught up with it yet.
	gathered uint64
}

// split is one Shamir split of K for one generation, kept in memory so that
// every holder of the generation gets a share of the same polynomial.
type split struct {
	id     generations.SplitID
	shares map[peer.ID][]byte
	// envs keeps each holder's sealed envelope, so a retried push sends the
	// same bytes and the holder answers with the same receipt (a re-seal
	// would differ in its nonce and be refused as a duplicate).
	envs map[peer.ID]*shares.Envelope
	dup  map[peer.ID]bool // holders that refused: they hold an older split
	// held marks holders whose receipts the ledger recorded, so a joiner
	// sharing ahead of its ledger does not push to them again.
	held map[peer.ID]bool
}

func newKeyring() *keyring {
	return &keyring{splits: map[uint64]*split{}, made: map[uint64]generations.SplitID{}, changed: make(chan struct{})}
}

func (kr *keyring) notifyLocked() {
	close(kr.changed)
	kr.changed = make(chan struct{})
}

func (kr *keyring) set(k []byte) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.k, kr.gathered = k, 0
	kr.notifyLocked()
}

// setGathered sets K rebuilt from its holders' shares of generation gen
// (see gathered).
func (kr *keyring) setGathered(k []byte, gen uint64) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.k, kr.gathered = k, gen
	kr.notifyLocked()
}

// gatheredFrom returns the generation K in memory was rebuilt from, 0 if
// none.
func (kr *keyring) gatheredFrom() uint64 {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if kr.k == nil {
		return 0
	}
	return kr.gathered
}

// get returns a copy of K, or nil when locked.
func (kr *keyring) get() []byte {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	return slices.Clone(kr.k)
}

func (kr *keyring) setProgress(p UnlockProgress) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if !p.equal(kr.progress) {
		kr.progress = p
		kr.notifyLocked()
	}
}

func (kr *keyring) state() ([]byte, UnlockProgress, <-chan struct{}) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	return slices.Clone(kr.k), kr.progress, kr.changed
}

// wipe forgets K and every split, zeroing them.
func (kr *keyring) wipe() {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	clear(kr.k)
	kr.k, kr.gathered = nil, 0
	for g, sp := range kr.splits {
		sp.wipe()
		delete(kr.splits, g)
	}
	kr.notifyLocked()
}

func (sp *split) wipe() {
	for _, s := range sp.shares {
		clear(s)
	}
}

func newK() ([]byte, error) {
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	return k, err
}

// keyCheck is the value recorded in the ledger the first time the owner is
// escrowed (rule K4): a MAC that binds K to the owner and the cluster. It
// reveals nothing about K.
func keyCheck(k []byte, clusterID string, owner peer.ID) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte("p2pkey/keycheck/v1\x00"))
	m.Write([]byte(clusterID))
	m.Write([]byte{0})
	m.Write([]byte(owner))
	return m.Sum(nil)
}

// DeriveKey returns the key for purpose derived from a node key k of
// cluster clusterID: HKDF-SHA256, exactly what Node.Key returns. It is
// exported for offline tools and tests that rebuild K from envelopes (the
// recovery path and the escrow invariant checker); a running node never
// hands out K itself (rule K3).
func DeriveKey(k []byte, clusterID, purpose string) ([]byte, error) {
	return deriveKey(k, clusterID, purpose)
}

// deriveKey is the only form in which K leaves the node (rule K3).
func deriveKey(k []byte, clusterID, purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, k, []byte("p2pkey/derive/v1"), clusterID+"\x00"+purpose, KeySize)
}

// foreignKey reports whether K in memory is not the K the cluster holds for
// this node. K never changes for a member (rule K1), but a process that
// restarted mid-join, or was admitted and then restarted before it had Raft
// state, makes a K of its own. K is this node's if it was gathered from a
// threshold of shares, or matches the ledger's key check, or, with no check
// recorded yet, every escrow the ledger counts for this node (open or
// committed) is of a split this process made. Otherwise it is foreign:
// serving keys derived from it, or escrowing it, would be wrong.
func (n *Node) foreignKey(k []byte) bool {
	if k == nil || n.keys.gatheredFrom() != 0 {
		return false
	}
	var check []byte
	var live []generations.Escrow
	n.view(func(l *generations.Ledger) {
		check, _ = l.KeyCheck(n.host.ID())
		live = l.Coverage(n.host.ID()).Live
	})
	if len(check) > 0 {
		return subtle.ConstantTimeCompare(keyCheck(k, n.clusterID, n.host.ID()), check) != 1
	}
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	for _, e := range live {
		if e.Escrowed && e.Split != n.keys.made[e.Generation] {
			return true
		}
	}
	return false
}

// dropForeignKey wipes a foreign K (see foreignKey) and reports whether it
// did; the escrowed K then comes back from the holders.
func (n *Node) dropForeignKey() bool {
	k := n.keys.get()
	defer clear(k)
	if !n.foreignKey(k) {
		return false
	}
	n.keys.wipe()
	n.keys.mu.Lock()
	clear(n.keys.made)
	n.keys.mu.Unlock()
	n.keys.setProgress(UnlockProgress{Reason: "this process's key is not the one the cluster holds; waiting for the cluster"})
	return true
}
