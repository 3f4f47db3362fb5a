package generations

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Every query returns a copy, sorted deterministically: peer lists by peer
// ID, generations ascending.

// Member is a copy of one member record.
type Member struct {
	ID         peer.ID
	Status     MemberStatus
	JoinedAt   time.Time // when it consumed its invite (or bootstrapped)
	AdmittedAt time.Time // when it became active; zero while joining
	RemovedAt  time.Time
	Addrs      []string // multiaddr strings, informational
	// Reason is why a rejected joiner was not admitted (J5), or why a
	// member lapsed: "lapsed: its newest escrowed generation N was retired
	// by the retention bound (max K generations behind)".
	Reason string
	// For a lapsed member (status lapsed, or removed after it lapsed): when
	// it lapsed, the retired generation that was its newest escrow, and
	// the number of generations that existed then. Every envelope it owns
	// in generations 1..LapsedThrough is dead; if it is invited again, its
	// new envelopes are in later generations.
	LapsedAt         time.Time
	LapsedGeneration uint64
	LapsedThrough    uint64
	// Suspended: at least one member voted to remove it (R2); holders keep
	// its envelopes but do not serve them. RemoveVotes and ReinstateVotes
	// list the voters (sorted); VotesNeeded is a majority of the other
	// active members, the count that decides either way.
	Suspended      bool
	RemoveVotes    []peer.ID
	ReinstateVotes []peer.ID
	VotesNeeded    int
}

// Invite is a copy of one invite record. The ledger knows only its hash.
type Invite struct {
	Hash      []byte
	Key       []byte // Ed25519 public key seeded by the secret
	ExpiresAt time.Time
	Issuer    peer.ID
	UsedBy    peer.ID // empty while unused
	UsedAt    time.Time
	CreatedAt time.Time
}

// Generation is a copy of one generation record.
type Generation struct {
	Number      uint64
	State       GenerationState
	Members     []peer.ID // M(g), sorted
	Threshold   int       // t(g) = floor(|M(g)|/2) + 1
	Joiners     []peer.ID // the joiners it was opened for
	Removals    []peer.ID // members of the then-current generation left out
	OpenedAt    time.Time
	Deadline    time.Time
	CommittedAt time.Time
	AbortedAt   time.Time
	RetiredAt   time.Time
	// Receipts is the number of receipts recorded; Escrowed the number of
	// members with at least Threshold of them.
	Receipts int
	Escrowed int
}

// ClusterID returns the cluster ID, "" before Bootstrap.
func (l *Ledger) ClusterID() string { return l.clusterID }

// Bootstrapped reports whether Bootstrap has been applied.
func (l *Ledger) Bootstrapped() bool { return l.clusterID != "" }

// Members returns every member record (any status), sorted by peer ID.
func (l *Ledger) Members() []Member {
	out := make([]Member, 0, len(l.members))
	for _, p := range sortedKeys(l.members) {
		out = append(out, l.memberCopy(p))
	}
	return out
}

// Member returns one member record.
func (l *Ledger) Member(p peer.ID) (Member, bool) {
	if _, ok := l.members[p]; !ok {
		return Member{}, false
	}
	return l.memberCopy(p), true
}

// Active returns the active members, sorted. These are the voters.
func (l *Ledger) Active() []peer.ID { return l.withStatus(StatusActive) }

// Joining returns the members waiting for their generation to commit.
func (l *Ledger) Joining() []peer.ID { return l.withStatus(StatusJoining) }

// PendingJoiners returns joining members that are in no open generation:
// they wait for the next OpenGeneration (G2 batching).
func (l *Ledger) PendingJoiners() []peer.ID {
	g := l.open()
	var out []peer.ID
	for _, p := range l.withStatus(StatusJoining) {
		if g == nil || !g.has(p) {
			out = append(out, p)
		}
	}
	return out
}

func (l *Ledger) withStatus(s MemberStatus) []peer.ID {
	var out []peer.ID
	for _, p := range sortedKeys(l.members) {
		if l.members[p].status == s {
			out = append(out, p)
		}
	}
	return out
}

func (l *Ledger) memberCopy(p peer.ID) Member {
	m := l.members[p]
	return Member{
		ID: p, Status: m.status, JoinedAt: fromNanos(m.joinedAt), AdmittedAt: fromNanos(m.admittedAt),
		RemovedAt: fromNanos(m.removedAt), Addrs: slices.Clone(m.addrs), Reason: m.reason,
		LapsedAt: fromNanos(m.lapsedAt), LapsedGeneration: m.lapsedGen, LapsedThrough: m.lapsedThrough,
		Suspended: m.suspended(), RemoveVotes: nilIfEmpty(sortedKeys(m.removeVotes)),
		ReinstateVotes: nilIfEmpty(sortedKeys(m.reinstateVotes)), VotesNeeded: l.VotesNeeded(p),
	}
}

func nilIfEmpty(ps []peer.ID) []peer.ID {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// Invite looks an invite up by the SHA-256 hash of its secret.
func (l *Ledger) Invite(hash []byte) (Invite, bool) {
	if len(hash) != DigestSize {
		return Invite{}, false
	}
	inv, ok := l.invites[[DigestSize]byte(hash)]
	if !ok {
		return Invite{}, false
	}
	return Invite{
		Hash: bytes.Clone(hash), Key: bytes.Clone(inv.key), ExpiresAt: fromNanos(inv.expiresAt), Issuer: inv.issuer, UsedBy: inv.usedBy,
		UsedAt: fromNanos(inv.usedAt), CreatedAt: fromNanos(inv.createdAt),
	}, true
}

// KeyCheck returns owner's recorded key-check value (rule K4).
func (l *Ledger) KeyCheck(owner peer.ID) ([]byte, bool) {
	v, ok := l.keyChecks[owner]
	return bytes.Clone(v), ok
}

// Current returns the newest committed generation.
func (l *Ledger) Current() (Generation, bool) {
	g := l.current()
	if g == nil {
		return Generation{}, false
	}
	return g.copy(), true
}

// Newest returns the generation with the highest number, whatever its
// state (open, committed, aborted or retired).
func (l *Ledger) Newest() (Generation, bool) {
	if len(l.gens) == 0 {
		return Generation{}, false
	}
	return l.gens[len(l.gens)-1].copy(), true
}

// Open returns the open generation (there is at most one, G2).
func (l *Ledger) Open() (Generation, bool) {
	g := l.open()
	if g == nil {
		return Generation{}, false
	}
	return g.copy(), true
}

// Generation returns generation n.
func (l *Ledger) Generation(n uint64) (Generation, bool) {
	g := l.gen(n)
	if g == nil {
		return Generation{}, false
	}
	return g.copy(), true
}

// Generations returns every generation, ascending (aborted and retired ones
// included; they keep their metadata but no receipts).
func (l *Ledger) Generations() []Generation {
	out := make([]Generation, 0, len(l.gens))
	for _, g := range l.gens {
		out = append(out, g.copy())
	}
	return out
}

func (g *generation) copy() Generation {
	c := Generation{
		Number: g.num, State: g.state, Members: slices.Clone(g.members), Threshold: g.threshold,
		Joiners: slices.Clone(g.joiners), Removals: slices.Clone(g.removals),
		OpenedAt: fromNanos(g.openedAt), Deadline: fromNanos(g.deadline), CommittedAt: fromNanos(g.committedAt),
		AbortedAt: fromNanos(g.abortedAt), RetiredAt: fromNanos(g.retiredAt),
	}
	for _, o := range g.members {
		n := len(g.receipts[o])
		c.Receipts += n
		if n >= g.threshold {
			c.Escrowed++
		}
	}
	return c
}

// Escrow is one owner's standing in one generation.
type Escrow struct {
	Generation uint64
	State      GenerationState
	Held       int       // receipts recorded: sibling shares held, own one included
	Threshold  int       // t(g)
	Holders    []peer.ID // sorted
	Escrowed   bool      // Held >= Threshold
	// Split is the owner's split every receipt counted here belongs to
	// (zero when there is none).
	Split SplitID
}

// Coverage is one owner's custody across generations (rule G6).
type Coverage struct {
	Owner peer.ID
	// Generation is the newest committed generation in which the owner is
	// escrowed (the one it unlocks with, G5), 0 if none. SharesHeld,
	// Threshold and Holders describe it.
	Generation uint64
	SharesHeld int
	Threshold  int
	Holders    []peer.ID
	Split      SplitID
	// Suspended: a member voted to remove the owner (R2); no holder serves
	// its envelopes until a majority reinstates it.
	Suspended bool
	// Behind is how many committed generations Generation is behind the
	// current one (0 when the owner is escrowed in the current generation,
	// or in none). When a commit would make it exceed
	// Retention().MaxGenerationsBehind, that generation is retired and the
	// owner lapses, unless it has escrowed in a newer one by then.
	Behind uint64
	// CanUnlock: the owner is neither removed nor lapsed and is escrowed in
	// a committed generation, so a quorum of its holders can give its key
	// back.
	CanUnlock bool
	// Open is the owner's standing in the open generation, if it is in it.
	Open *Escrow
	// Live lists the owner's standing in every open or committed
	// generation it is a member of, ascending.
	Live []Escrow
}

// Coverage reports owner's custody.
func (l *Ledger) Coverage(owner peer.ID) Coverage {
	c := Coverage{Owner: owner}
	revoked := false
	if m := l.members[owner]; m != nil && (m.status == StatusRemoved || m.status == StatusLapsed) {
		revoked = true
	}
	for _, g := range l.gens {
		if !g.state.Live() || !g.has(owner) {
			continue
		}
		e := g.escrow(owner)
		c.Live = append(c.Live, e)
		if g.state == StateOpen {
			ec := e
			c.Open = &ec
		} else if e.Escrowed {
			c.Generation, c.SharesHeld, c.Threshold, c.Holders, c.Split = e.Generation, e.Held, e.Threshold, slices.Clone(e.Holders), e.Split
		}
	}
	if cur := l.current(); cur != nil && c.Generation != 0 {
		c.Behind = l.behind(c.Generation, cur.num)
	}
	if m := l.members[owner]; m != nil && m.suspended() {
		c.Suspended = true
	}
	c.CanUnlock = !revoked && !c.Suspended && c.Generation != 0
	return c
}

// missingHolders lists the members of g that have no receipt for owner's
// envelope yet and whose receipt could still be recorded (not removed or
// lapsed; active, for the current generation).
func (l *Ledger) missingHolders(g *generation, owner peer.ID) []peer.ID {
	var out []peer.ID
	for _, h := range g.members {
		if _, ok := g.receipts[owner][h]; !ok && l.receiptParties(g, owner, h) == nil {
			out = append(out, h)
		}
	}
	return out
}

func (g *generation) escrow(owner peer.ID) Escrow {
	e := Escrow{Generation: g.num, State: g.state, Threshold: g.threshold}
	e.Holders = sortedKeys(g.receipts[owner])
	if len(e.Holders) == 0 {
		e.Holders = nil
	}
	e.Held = len(e.Holders)
	e.Escrowed = e.Held >= g.threshold
	if e.Held > 0 {
		e.Split = g.splits[owner]
	}
	return e
}

// Duties is what one node must do now, as far as the ledger can tell.
type Duties struct {
	Node peer.ID
	// Open is the open generation the node is a member of, 0 if none.
	Open uint64
	// PushTo lists the holders of the open generation that have no receipt
	// yet for the node's envelope (itself included: its self-receipt), and
	// are neither removed nor lapsed.
	PushTo []peer.ID
	// Current is the current generation when the node is an active member
	// of it but not escrowed in it (it missed the commit, G5);
	// PushToCurrent lists its holders without a receipt that can still
	// record one (active ones). Late receipts for the current generation
	// are accepted.
	Current       uint64
	PushToCurrent []peer.ID
	// DeleteGenerations lists aborted and retired generations the node was a
	// member of: every envelope it holds for them must go (G3, G4).
	DeleteGenerations []uint64
	// DeleteOwners lists removed owners: every envelope it holds for them
	// must go and none may be served (R1). Removal is for good, so a sweep
	// of a removed owner may be remembered forever.
	DeleteOwners []peer.ID
	// DeleteLapsedOwners lists lapsed owners (retention bound): every
	// envelope it holds for them in generations 1..Through must go and none
	// may be served. They are kept apart from DeleteOwners because a lapsed
	// peer may be invited again with the same identity: a sweep must not
	// be remembered past its rejoin, nor touch its envelopes of generations
	// after Through.
	DeleteLapsedOwners []LapsedOwner
	// NeedsKeyCheck: the node is escrowed but has no key-check value yet (K4).
	NeedsKeyCheck bool
}

// LapsedOwner is a lapsed owner whose envelopes of generations 1..Through
// are dead (see Member.LapsedThrough).
type LapsedOwner struct {
	Owner   peer.ID
	Through uint64
}

// Duties reports what node must do. Holders sweep their store with
// EnvelopeLive for anything finer. A lapsed node has no push or key-check
// duty (it must be invited again), but it still sweeps like a member: it
// keeps the envelopes it holds for others in live generations.
func (l *Ledger) Duties(node peer.ID) Duties {
	d := Duties{Node: node}
	d.DeleteOwners = l.withStatus(StatusRemoved)
	for _, p := range l.withStatus(StatusLapsed) {
		d.DeleteLapsedOwners = append(d.DeleteLapsedOwners, LapsedOwner{Owner: p, Through: l.members[p].lapsedThrough})
	}
	m := l.members[node]
	if m == nil || !m.status.IsMember() && m.status != StatusLapsed {
		return d
	}
	member := m.status.IsMember()
	if g := l.open(); member && g != nil && g.has(node) {
		d.Open = g.num
		d.PushTo = l.missingHolders(g, node)
	}
	if g := l.current(); m.status == StatusActive && g != nil && g.has(node) && !g.escrowed(node) {
		d.Current, d.PushToCurrent = g.num, l.missingHolders(g, node)
	}
	escrowed := false
	for _, g := range l.gens {
		if !g.has(node) {
			continue
		}
		if !g.state.Live() {
			d.DeleteGenerations = append(d.DeleteGenerations, g.num)
		} else if g.escrowed(node) {
			escrowed = true
		}
	}
	_, has := l.keyChecks[node]
	d.NeedsKeyCheck = member && escrowed && !has
	return d
}

// EnvelopeLive reports whether holder should keep owner's envelope of
// generation gen: the generation is open or committed, both are members of
// it, neither was removed or rejected, the owner has not lapsed, and either
// a receipt for it is recorded or one may still land (the push precedes the
// receipt): in the open generation, or in the current one when receiptParties
// would accept it. A lapsed holder keeps what it has receipts for.
func (l *Ledger) EnvelopeLive(gen uint64, owner, holder peer.ID) bool {
	g := l.gen(gen)
	if g == nil || !g.state.Live() || !g.has(owner) || !g.has(holder) {
		return false
	}
	for _, p := range []peer.ID{owner, holder} {
		if m := l.members[p]; m == nil || m.status == StatusRemoved || m.status == StatusRejected {
			return false
		}
	}
	if m := l.members[owner]; m.status == StatusLapsed {
		return false
	}
	if _, ok := g.receipts[owner][holder]; ok {
		return true
	}
	return (g.state == StateOpen || g == l.current()) && l.receiptParties(g, owner, holder) == nil
}

// ServeAllowed reports whether holder may serve owner's envelope of
// generation gen to owner (rules R1, S3, G3, G4, and the retention bound):
// nil if so, else the sentinel of the rule that forbids it. A lapsed owner's
// envelopes are never served (ErrOwnerLapsed); a lapsed holder still serves
// what it has a receipt for.
func (l *Ledger) ServeAllowed(gen uint64, owner, holder peer.ID) error {
	g := l.gen(gen)
	if g == nil {
		return fmt.Errorf("%w: %d", ErrUnknownGeneration, gen)
	}
	switch g.state {
	case StateAborted:
		return fmt.Errorf("%w: %d", ErrGenerationAborted, gen)
	case StateRetired:
		return fmt.Errorf("%w: %d", ErrGenerationRetired, gen)
	}
	if m := l.members[owner]; m != nil && m.status == StatusRemoved {
		return fmt.Errorf("%w: %s", ErrOwnerRemoved, owner)
	}
	if m := l.members[owner]; m != nil && m.status == StatusLapsed {
		return fmt.Errorf("%w: %s", ErrOwnerLapsed, owner)
	}
	if m := l.members[owner]; m != nil && m.suspended() {
		return fmt.Errorf("%w: %s (%d of %d remove votes)", ErrOwnerSuspended, owner, l.countVotes(owner, m.removeVotes), l.VotesNeeded(owner))
	}
	if m := l.members[holder]; m != nil && m.status == StatusRemoved {
		return fmt.Errorf("%w: %s", ErrHolderRemoved, holder)
	}
	// A lapsed holder may serve what it has a receipt for: it is not
	// distrusted, and the envelope is sealed to its owner.
	if !g.has(owner) {
		return fmt.Errorf("%w: %s", ErrOwnerNotInGeneration, owner)
	}
	if !g.has(holder) {
		return fmt.Errorf("%w: %s", ErrHolderNotInGeneration, holder)
	}
	if _, ok := g.receipts[owner][holder]; !ok {
		return fmt.Errorf("%w: generation %d owner %s holder %s", ErrNoReceipt, gen, owner, holder)
	}
	return nil
}

// Split returns the split owner's receipts in generation gen belong to.
func (l *Ledger) Split(gen uint64, owner peer.ID) (SplitID, bool) {
	g := l.gen(gen)
	if g == nil || len(g.receipts[owner]) == 0 {
		return SplitID{}, false
	}
	return g.splits[owner], true
}

// Now returns the ledger's clock: the newest leader stamp applied, the
// zero time before any.
func (l *Ledger) Now() time.Time { return fromNanos(l.lastNow) }

// Seq returns author's last accepted sequence number, 0 if none.
func (l *Ledger) Seq(author peer.ID) uint64 { return l.seqs[author] }

// ReceiptDigest returns the envelope digest recorded for (gen, owner,
// holder), so a holder or owner can check the envelope it has.
func (l *Ledger) ReceiptDigest(gen uint64, owner, holder peer.ID) ([]byte, bool) {
	g := l.gen(gen)
	if g == nil {
		return nil, false
	}
	r, ok := g.receipts[owner][holder]
	if !ok {
		return nil, false
	}
	return bytes.Clone(r.digest[:]), true
}

// Matrix is the owner × holder table of one generation (G6).
type Matrix struct {
	Generation uint64
	State      GenerationState
	Threshold  int
	// Peers is M(g), sorted; it indexes both rows (owners) and columns
	// (holders).
	Peers []peer.ID
	// Held[i][j]: a receipt for owner Peers[i] held by Peers[j].
	Held [][]bool
	// Digests[i][j] is the recorded envelope digest, nil where not held.
	Digests [][][]byte
	// Count[i] is the receipts of owner Peers[i]; Escrowed[i] is
	// Count[i] >= Threshold.
	Count    []int
	Escrowed []bool
}

// Matrix returns the owner × holder table of generation gen.
func (l *Ledger) Matrix(gen uint64) (Matrix, bool) {
	g := l.gen(gen)
	if g == nil {
		return Matrix{}, false
	}
	n := len(g.members)
	m := Matrix{
		Generation: g.num, State: g.state, Threshold: g.threshold, Peers: slices.Clone(g.members),
		Held: make([][]bool, n), Digests: make([][][]byte, n), Count: make([]int, n), Escrowed: make([]bool, n),
	}
	for i, o := range g.members {
		m.Held[i] = make([]bool, n)
		m.Digests[i] = make([][]byte, n)
		for j, h := range g.members {
			if r, ok := g.receipts[o][h]; ok {
				m.Held[i][j] = true
				m.Digests[i][j] = bytes.Clone(r.digest[:])
				m.Count[i]++
			}
		}
		m.Escrowed[i] = m.Count[i] >= g.threshold
	}
	return m, true
}

// JoinShortfall reports what joiner still lacks in the open generation it
// is a joiner of (J2, J3, and the majority rule). For a joiner that was
// rejected, Member(joiner).Reason keeps the shortfall it was rejected with.
func (l *Ledger) JoinShortfall(joiner peer.ID) (Shortfall, bool) {
	g := l.open()
	if g == nil || !slices.Contains(g.joiners, joiner) {
		return Shortfall{}, false
	}
	return g.shortfall(joiner), true
}

// RetentionBlockers returns the active members of the current generation
// that keep committed generation gen from being retired (G4): they are not
// yet escrowed with margin (min(t+1, |M|) receipts of one split) in a newer
// committed generation, or, for a member with a margin in no committed
// generation, not escrowed in a newer one at all. The retention bound may
// still retire gen (see Retention).
func (l *Ledger) RetentionBlockers(gen uint64) []peer.ID {
	g := l.gen(gen)
	if g == nil || g.state != StateCommitted {
		return nil
	}
	return l.retentionBlockers(g)
}
