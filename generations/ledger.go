package generations

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// InviteRetention is how long, past its expiry, an invite is kept in the
// ledger. Older invites are pruned when a new invite is added, so a very old
// invite hash is then reported as unknown rather than expired.
const InviteRetention = 7 * 24 * time.Hour

// MaxLiveInvites bounds the invites that are neither used nor expired.
const MaxLiveInvites = 1024

// Ledger is the custody ledger: the whole replicated state of a cluster.
//
// A Ledger is not safe for concurrent use; the consensus layer holds it
// behind a mutex. It never reads a clock, draws randomness or does I/O: the
// same command log always gives the same state.
type Ledger struct {
	clusterID string
	members   map[peer.ID]*member
	invites   map[[DigestSize]byte]*invite
	gens      []*generation // gens[i].num == i+1
	keyChecks map[peer.ID][]byte
	// maxBehind is the retention bound; 0 means the default (a ledger
	// bootstrapped before the bound existed). See Retention.
	maxBehind uint32
	// graceMs is the lapse grace in milliseconds; 0 means the default
	// (a ledger bootstrapped before the field existed).
	graceMs uint64
	// lastNow is the newest leader stamp applied: the ledger's clock, which
	// never goes backwards.
	lastNow int64
	// seqs is each author's last accepted sequence number (rule S7).
	seqs map[peer.ID]uint64
}

type member struct {
	status     MemberStatus
	joinedAt   int64
	admittedAt int64
	removedAt  int64
	addrs      []string
	reason     string
	// Set when the member lapsed (see lapse).
	lapsedAt      int64
	lapsedGen     uint64
	lapsedThrough uint64
	// Removal votes (R2), by voter. Any remove vote suspends the member.
	removeVotes    map[peer.ID]struct{}
	reinstateVotes map[peer.ID]struct{}
}

// suspended reports whether the member has any remove vote against it.
func (m *member) suspended() bool { return len(m.removeVotes) > 0 }

type invite struct {
	key       []byte // Ed25519 public key seeded by the secret
	expiresAt int64
	issuer    peer.ID
	usedBy    peer.ID
	usedAt    int64
	createdAt int64
}

type receipt struct {
	digest [DigestSize]byte
	sig    []byte
}

type generation struct {
	num         uint64
	state       GenerationState
	members     []peer.ID // sorted
	memberSet   map[peer.ID]struct{}
	threshold   int
	joiners     []peer.ID // sorted
	removals    []peer.ID // sorted
	openedAt    int64
	deadline    int64
	committedAt int64
	abortedAt   int64
	retiredAt   int64
	// receipts[owner][holder]; empty unless the generation is live.
	receipts map[peer.ID]map[peer.ID]receipt
	// splits[owner] is the one split all of owner's receipts in g belong
	// to; set with its first receipt, replaced only while not escrowed.
	splits map[peer.ID]SplitID
}

// New returns an empty ledger, waiting for Bootstrap.
func New() *Ledger {
	return &Ledger{
		members:   make(map[peer.ID]*member),
		invites:   make(map[[DigestSize]byte]*invite),
		keyChecks: make(map[peer.ID][]byte),
		seqs:      make(map[peer.ID]uint64),
	}
}

// ensureMaps makes the zero Ledger usable.
func (l *Ledger) ensureMaps() {
	if l.members == nil {
		l.members = make(map[peer.ID]*member)
	}
	if l.invites == nil {
		l.invites = make(map[[DigestSize]byte]*invite)
	}
	if l.keyChecks == nil {
		l.keyChecks = make(map[peer.ID][]byte)
	}
	if l.seqs == nil {
		l.seqs = make(map[peer.ID]uint64)
	}
}

// Shortfall says exactly what a joiner of a generation is missing (rule J5).
type Shortfall struct {
	Joiner     peer.ID
	Generation uint64
	// J2: holders that acknowledged the joiner's envelopes, of Needed.
	HoldersAcked   int
	MissingHolders []peer.ID
	// J3: owners whose envelope the joiner holds, of Needed.
	OwnersHeld    int
	MissingOwners []peer.ID
	// The majority rule: members escrowed in the generation, of Needed.
	MembersEscrowed int
	// Needed is t(g).
	Needed int
}

// Met reports whether the joiner meets J2 and J3.
func (s Shortfall) Met() bool { return s.HoldersAcked >= s.Needed && s.OwnersHeld >= s.Needed }

// String renders the shortfall for the joiner, for example
// "generation 4: 2 of 3 holders acknowledged; holds shares of 1 of 3 required owners".
func (s Shortfall) String() string {
	var parts []string
	if s.HoldersAcked < s.Needed {
		parts = append(parts, fmt.Sprintf("%d of %d holders acknowledged", s.HoldersAcked, s.Needed))
	}
	if s.OwnersHeld < s.Needed {
		parts = append(parts, fmt.Sprintf("holds shares of %d of %d required owners", s.OwnersHeld, s.Needed))
	}
	if s.MembersEscrowed < s.Needed {
		parts = append(parts, fmt.Sprintf("%d of %d members escrowed", s.MembersEscrowed, s.Needed))
	}
	if len(parts) == 0 {
		return fmt.Sprintf("generation %d: nothing missing", s.Generation)
	}
	return fmt.Sprintf("generation %d: %s", s.Generation, strings.Join(parts, "; "))
}

// Result is what a successfully applied command did.
type Result struct {
	// Opened is the generation opened by the command, 0 if none.
	Opened uint64
	// Committed is the generation that committed, 0 if none.
	Committed uint64
	// Aborted is the generation aborted by the command, 0 if none.
	Aborted uint64
	// Retired lists the generations retired by the command, ascending.
	Retired []uint64
	// Admitted lists the joiners that became active, sorted.
	Admitted []peer.ID
	// Lapsed lists the members the retention bound made lapsed, sorted.
	Lapsed []peer.ID
	// Rejected says, per joiner of an aborted generation, what was missing.
	Rejected []Shortfall
	// Recorded and Duplicates count the receipts of a RecordReceipts batch
	// that were new and that were identical to recorded ones.
	Recorded   int
	Duplicates int
	// Replaced counts owners whose receipts of an earlier split (not
	// escrowed) the batch replaced.
	Replaced int
	// Suspended is the member the vote suspended; Reinstated the member
	// whose suspension it lifted; Removed the member whose removal it (or
	// a leave) made final.
	Suspended  peer.ID
	Reinstated peer.ID
	Removed    peer.ID
}

// Apply decodes and applies one committed Raft log entry whose leader stamp
// is now (unix nanoseconds). It never panics and leaves the ledger
// unchanged when it returns an error; the error wraps exactly one sentinel
// (see ErrorCode).
func (l *Ledger) Apply(now int64, data []byte) (Result, error) {
	cmd, err := DecodeCommand(data)
	if err != nil {
		return Result{}, err
	}
	return l.ApplyCommand(now, cmd)
}

// ApplyCommand validates and applies a decoded command. See Apply.
//
// Order of checks: fields (ValidateCommand); the leader's stamp (the
// ledger's time is max(stamp, last applied stamp): it never goes
// backwards); the author's clock within MaxClockSkew of it; the author's
// signature over SigHash; its sequence number above its last accepted one
// (no replay, no reordering); the authority table; then the command's own
// rules. Only a command that applies consumes its sequence number and
// advances the clock.
func (l *Ledger) ApplyCommand(stamp int64, cmd *pb.Command) (res Result, err error) {
	defer func() {
		// Last line of defence for rule S4: validation runs before any
		// mutation, so a panic here is a bug; report it deterministically
		// rather than crash every replica.
		if r := recover(); r != nil {
			res, err = Result{}, fmt.Errorf("%w: %v", ErrInternal, r)
		}
	}()
	if err := ValidateCommand(cmd); err != nil {
		return Result{}, err
	}
	l.ensureMaps()
	if stamp <= 0 {
		return Result{}, fmt.Errorf("%w: leader stamp %d", ErrBadTime, stamp)
	}
	now := max(stamp, l.lastNow)
	clusterID := l.clusterID
	if b, ok := cmd.GetBody().(*pb.Command_Bootstrap); ok && clusterID == "" {
		clusterID = b.Bootstrap.GetClusterId()
	} else if clusterID == "" {
		return Result{}, ErrNotBootstrapped
	}
	if skew := cmd.GetIssuedAt() - now; skew > int64(MaxClockSkew) || skew < -int64(MaxClockSkew) {
		return Result{}, fmt.Errorf("%w: issued %s from the leader's clock (at most %s)", ErrClockSkew, time.Duration(skew), MaxClockSkew)
	}
	if err := verifyCommand(clusterID, cmd); err != nil {
		return Result{}, err
	}
	author := peer.ID(cmd.GetAuthor())
	if last := l.seqs[author]; cmd.GetSeq() <= last {
		return Result{}, fmt.Errorf("%w: %s sent %d after %d", ErrReplay, author, cmd.GetSeq(), last)
	}
	if err := l.authorize(cmd); err != nil {
		return Result{}, err
	}
	res, err = l.dispatch(now, author, cmd)
	if err == nil {
		l.seqs[author] = cmd.GetSeq()
		l.lastNow = now
		// Time moves the retention bound too (LapseGrace): whatever a
		// member's grace held back is retired at the first command after
		// the grace, when no generation is open.
		l.retireEligible(now, &res)
	}
	return res, err
}

func (l *Ledger) dispatch(now int64, author peer.ID, cmd *pb.Command) (Result, error) {
	switch b := cmd.GetBody().(type) {
	case *pb.Command_Bootstrap:
		return l.bootstrap(now, b.Bootstrap)
	case *pb.Command_AddInvite:
		return l.addInvite(now, b.AddInvite)
	case *pb.Command_ConsumeInvite:
		return l.consumeInvite(now, b.ConsumeInvite)
	case *pb.Command_OpenGeneration:
		return l.openGenerationCmd(now, b.OpenGeneration)
	case *pb.Command_RecordReceipts:
		return l.recordReceipts(now, b.RecordReceipts)
	case *pb.Command_AbortGeneration:
		return l.abortGenerationCmd(now, author, b.AbortGeneration)
	case *pb.Command_RetireGeneration:
		return l.retireGenerationCmd(now, b.RetireGeneration)
	case *pb.Command_RemoveMember:
		return l.leave(now, b.RemoveMember)
	case *pb.Command_Vote:
		return l.vote(now, author, b.Vote)
	case *pb.Command_SetAddrs:
		return l.setAddrs(b.SetAddrs)
	case *pb.Command_RecordKeyCheck:
		return l.recordKeyCheck(b.RecordKeyCheck)
	case *pb.Command_SetRetention:
		return l.setRetention(now, b.SetRetention)
	}
	return Result{}, ErrEmptyCommand
}

func (l *Ledger) bootstrap(now int64, b *pb.Bootstrap) (Result, error) {
	if l.clusterID != "" {
		return Result{}, ErrAlreadyBootstrapped
	}
	founder := peer.ID(b.GetFounder())
	l.clusterID = b.GetClusterId()
	l.maxBehind = b.GetMaxGenerationsBehind()
	if l.maxBehind == 0 {
		// Stored explicitly, so that a later change of the default never
		// changes an existing cluster's policy.
		l.maxBehind = DefaultMaxGenerationsBehind
	}
	l.graceMs = b.GetLapseGraceMs()
	if l.graceMs == 0 {
		l.graceMs = uint64(LapseGrace.Milliseconds())
	}
	m := l.setStatus(founder, MemberAdmit)
	m.joinedAt, m.admittedAt = now, now
	return Result{}, nil
}

// setStatus moves p's status by e, through the member lifecycle table
// (MemberStatus.Next), and returns p's record: every change of a member's
// status goes through here. Join and admit start a fresh record (a rejected
// or lapsed peer comes back as a new member); the other events keep it.
//
// The caller has checked the command against the state before mutating
// anything, so an invalid transition here is a bug: setStatus panics, Apply
// reports the panic as ErrInternal, and the property and fuzz tests fail on
// that error.
func (l *Ledger) setStatus(p peer.ID, e MemberEvent) *member {
	m := l.members[p]
	from := StatusUnknown
	if m != nil {
		from = m.status
	}
	next, err := from.Next(e)
	if err != nil {
		panic(fmt.Errorf("member %s: %w", p, err))
	}
	if m == nil || e == MemberJoin || e == MemberAdmit {
		m = &member{}
		l.members[p] = m
	}
	m.status = next
	return m
}

// memberErr returns the sentinel for p not being a current member, or nil.
func (l *Ledger) memberErr(p peer.ID) error {
	m := l.members[p]
	switch {
	case m == nil || m.status == StatusRejected:
		return fmt.Errorf("%w: %s", ErrNotMember, p)
	case m.status == StatusRemoved:
		return fmt.Errorf("%w: %s", ErrMemberRemoved, p)
	case m.status == StatusLapsed:
		return fmt.Errorf("%w: %s", ErrMemberLapsed, p)
	}
	return nil
}

func (l *Ledger) activeErr(p peer.ID) error {
	if err := l.memberErr(p); err != nil {
		return err
	}
	if l.members[p].status != StatusActive {
		return fmt.Errorf("%w: %s is %s", ErrNotActive, p, l.members[p].status)
	}
	return nil
}

func (l *Ledger) addInvite(now int64, c *pb.AddInvite) (Result, error) {
	issuer := peer.ID(c.GetIssuer())
	if err := l.activeErr(issuer); err != nil {
		return Result{}, err
	}
	if c.GetExpiresAt() <= now {
		return Result{}, fmt.Errorf("%w: expires before it is issued", ErrInviteExpired)
	}
	if c.GetExpiresAt()-now > int64(MaxInviteTTL+MaxClockSkew) {
		return Result{}, fmt.Errorf("%w: expires in %s, at most %s", ErrInviteTTL, time.Duration(c.GetExpiresAt()-now), MaxInviteTTL)
	}
	h := [DigestSize]byte(c.GetHash())
	if _, dup := l.invites[h]; dup {
		return Result{}, ErrDuplicateInvite
	}
	live := 0
	for _, inv := range l.invites {
		if inv.usedBy == "" && inv.expiresAt > now {
			live++
		}
	}
	if live >= MaxLiveInvites {
		return Result{}, fmt.Errorf("%w: %d", ErrTooManyInvites, live)
	}
	// Prune invites long past their expiry (deterministic: depends on now).
	for k, inv := range l.invites {
		if inv.expiresAt <= now-int64(InviteRetention) {
			delete(l.invites, k)
		}
	}
	l.invites[h] = &invite{key: bytes.Clone(c.GetKey()), expiresAt: c.GetExpiresAt(), issuer: issuer, createdAt: now}
	return Result{}, nil
}

// CheckJoin runs every check applying cmd (a signed ConsumeInvite) would
// run, at time now, without changing anything: the member that receives a
// join calls it before proposing, so that a join with a wrong, used,
// expired or unproven invite costs no Raft entry (rule S10). The ledger
// checks again on apply.
func (l *Ledger) CheckJoin(cmd *pb.Command, now time.Time) error {
	if err := ValidateCommand(cmd); err != nil {
		return err
	}
	ci := cmd.GetConsumeInvite()
	if ci == nil {
		return fmt.Errorf("%w: not a ConsumeInvite", ErrEmptyCommand)
	}
	if !l.Bootstrapped() {
		return ErrNotBootstrapped
	}
	n := max(now.UnixNano(), l.lastNow)
	if skew := cmd.GetIssuedAt() - n; skew > int64(MaxClockSkew) || skew < -int64(MaxClockSkew) {
		return fmt.Errorf("%w: issued %s from this node's clock", ErrClockSkew, time.Duration(skew))
	}
	if err := l.authorize(cmd); err != nil {
		return err
	}
	if _, err := l.checkConsume(n, ci); err != nil {
		return err
	}
	if err := verifyCommand(l.clusterID, cmd); err != nil {
		return err
	}
	if last := l.seqs[peer.ID(cmd.GetAuthor())]; cmd.GetSeq() <= last {
		return fmt.Errorf("%w: sequence %d after %d", ErrReplay, cmd.GetSeq(), last)
	}
	return nil
}

// checkConsume checks a ConsumeInvite against the state and returns its
// invite.
func (l *Ledger) checkConsume(now int64, c *pb.ConsumeInvite) (*invite, error) {
	if c.GetClusterId() != l.clusterID {
		return nil, fmt.Errorf("%w: invite for %s, this is %s", ErrClusterMismatch, c.GetClusterId(), l.clusterID)
	}
	inv := l.invites[[DigestSize]byte(c.GetHash())]
	if inv == nil {
		return nil, ErrUnknownInvite
	}
	if inv.usedBy != "" {
		return nil, fmt.Errorf("%w: by %s", ErrInviteUsed, inv.usedBy)
	}
	if now >= inv.expiresAt {
		return nil, ErrInviteExpired
	}
	if m := l.members[inv.issuer]; m == nil || m.status == StatusRemoved || m.suspended() {
		return nil, fmt.Errorf("%w: issuer %s", ErrInviteRevoked, inv.issuer)
	}
	joiner := peer.ID(c.GetJoiner())
	if !ed25519.Verify(ed25519.PublicKey(inv.key), InviteProof(l.clusterID, c.GetHash(), joiner), c.GetProof()) {
		return nil, fmt.Errorf("%w: joiner %s", ErrBadInviteProof, joiner)
	}
	if m := l.members[joiner]; m != nil {
		switch m.status {
		case StatusRemoved:
			return nil, fmt.Errorf("%w: %s", ErrMemberRemoved, joiner)
		case StatusActive, StatusJoining:
			return nil, fmt.Errorf("%w: %s is %s", ErrAlreadyMember, joiner, m.status)
		}
		// Rejected and lapsed peers come back with a new invite, as a
		// fresh member record.
	}
	timeout := c.GetTimeout()
	if timeout == 0 && len(l.gens) > 0 {
		return nil, fmt.Errorf("%w: %d generations exist", ErrDirectAdmission, len(l.gens))
	}
	return inv, nil
}

func (l *Ledger) consumeInvite(now int64, c *pb.ConsumeInvite) (Result, error) {
	inv, err := l.checkConsume(now, c)
	if err != nil {
		return Result{}, err
	}
	joiner := peer.ID(c.GetJoiner())
	timeout := c.GetTimeout()
	deadline := now + timeout

	inv.usedBy, inv.usedAt = joiner, now
	var res Result
	addrs := slices.Clone(c.GetAddrs())
	if timeout == 0 {
		m := l.setStatus(joiner, MemberAdmit)
		m.joinedAt, m.admittedAt, m.addrs = now, now, addrs
		res.Admitted = []peer.ID{joiner}
		return res, nil
	}
	m := l.setStatus(joiner, MemberJoin)
	m.joinedAt, m.addrs = now, addrs
	if l.open() == nil {
		res.Opened = l.openGeneration(now, deadline)
	}
	return res, nil
}

func (l *Ledger) openGenerationCmd(now int64, c *pb.OpenGeneration) (Result, error) {
	if g := l.open(); g != nil {
		return Result{}, fmt.Errorf("%w: generation %d", ErrGenerationOpen, g.num)
	}
	next := l.nextMembers()
	if len(next) < 2 {
		return Result{}, fmt.Errorf("%w: %d", ErrTooFewMembers, len(next))
	}
	return Result{Opened: l.openGeneration(now, now+c.GetTimeout())}, nil
}

// nextMembers lists, sorted, the members a new generation would have:
// active ∪ joining.
func (l *Ledger) nextMembers() []peer.ID {
	var out []peer.ID
	for _, p := range sortedKeys(l.members) {
		if l.members[p].status.IsMember() {
			out = append(out, p)
		}
	}
	return out
}

// openGeneration opens the next generation with M = active ∪ joining, or
// returns 0 without opening one when that is fewer than 2 members: a split
// of threshold 1 is K itself, so a cluster of one is unescrowed (rule K1).
// The caller has checked that none is open.
func (l *Ledger) openGeneration(now, deadline int64) uint64 {
	if len(l.nextMembers()) < 2 {
		return 0
	}
	g := &generation{
		num:       uint64(len(l.gens)) + 1,
		state:     StateOpen,
		memberSet: make(map[peer.ID]struct{}),
		openedAt:  now,
		deadline:  deadline,
		receipts:  make(map[peer.ID]map[peer.ID]receipt),
		splits:    make(map[peer.ID]SplitID),
	}
	for _, p := range sortedKeys(l.members) {
		switch l.members[p].status {
		case StatusActive:
			g.members = append(g.members, p)
		case StatusJoining:
			g.members = append(g.members, p)
			g.joiners = append(g.joiners, p)
		default:
			continue
		}
		g.memberSet[p] = struct{}{}
	}
	g.threshold = len(g.members)/2 + 1
	if cur := l.current(); cur != nil {
		for _, p := range cur.members {
			if !g.has(p) {
				g.removals = append(g.removals, p)
			}
		}
	}
	l.gens = append(l.gens, g)
	return g.num
}

func (l *Ledger) recordReceipts(now int64, c *pb.RecordReceipts) (Result, error) {
	type key struct {
		gen           *generation
		owner, holder peer.ID
	}
	type ownerGen struct {
		gen   *generation
		owner peer.ID
	}
	var (
		fresh = make(map[key]receipt, len(c.GetReceipts()))
		order []key
		// split is the split of each (generation, owner) in this batch;
		// replace marks those that replace a recorded, unescrowed split.
		split   = make(map[ownerGen]SplitID)
		replace = make(map[ownerGen]bool)
		res     Result
	)
	// Phase 1: check every receipt; the batch is all or nothing.
	for i, r := range c.GetReceipts() {
		owner, holder := peer.ID(r.GetOwner()), peer.ID(r.GetHolder())
		g, err := l.receiptGeneration(r.GetGeneration())
		if err != nil {
			return Result{}, fmt.Errorf("receipt %d: %w", i, err)
		}
		if err := l.receiptParties(g, owner, holder); err != nil {
			return Result{}, fmt.Errorf("receipt %d: %w", i, err)
		}
		sp := SplitID(r.GetSplit())
		og := ownerGen{g, owner}
		if prev, ok := split[og]; ok {
			if prev != sp {
				return Result{}, fmt.Errorf("receipt %d: %w: two splits for owner %s in one batch", i, ErrSplitMismatch, owner)
			}
		} else {
			split[og] = sp
			if recorded, ok := g.splits[owner]; ok && len(g.receipts[owner]) > 0 && recorded != sp {
				// An owner that lost its split (it restarted) replaces it
				// completely, and only while it is not escrowed with it:
				// never a mix of two polynomials (escrowed means
				// recoverable).
				if g.escrowed(owner) {
					return Result{}, fmt.Errorf("receipt %d: %w: generation %d owner %s", i, ErrSplitMismatch, g.num, owner)
				}
				replace[og] = true
			}
		}
		digest := [DigestSize]byte(r.GetDigest())
		k := key{g, owner, holder}
		prev, seen := fresh[k]
		if !seen && !replace[og] {
			prev, seen = g.receipts[owner][holder]
		}
		if seen {
			if prev.digest != digest {
				return Result{}, fmt.Errorf("receipt %d: %w: generation %d owner %s holder %s", i, ErrDuplicateReceipt, g.num, owner, holder)
			}
			// Identical digest: idempotent, the first signature is kept.
			res.Duplicates++
			continue
		}
		if err := verifyReceipt(l.clusterID, g.num, owner, holder, sp, r.GetDigest(), r.GetSignature()); err != nil {
			return Result{}, fmt.Errorf("receipt %d: %w", i, err)
		}
		fresh[k] = receipt{digest: digest, sig: bytes.Clone(r.GetSignature())}
		order = append(order, k)
	}
	// Phase 2: record.
	for og := range replace {
		delete(og.gen.receipts, og.owner)
		res.Replaced++
	}
	for og, sp := range split {
		og.gen.splits[og.owner] = sp
	}
	touchedCurrent := false
	for _, k := range order {
		byHolder := k.gen.receipts[k.owner]
		if byHolder == nil {
			byHolder = make(map[peer.ID]receipt)
			k.gen.receipts[k.owner] = byHolder
		}
		byHolder[k.holder] = fresh[k]
		touchedCurrent = touchedCurrent || k.gen.state == StateCommitted
	}
	res.Recorded = len(order)
	if g := l.open(); g != nil && res.Recorded > 0 {
		l.maybeCommit(now, g, &res)
	}
	if touchedCurrent && res.Committed == 0 {
		// Late escrow in the current generation can release older ones.
		l.retireEligible(now, &res)
	}
	return res, nil
}

// receiptGeneration returns the generation a receipt may be recorded in:
// the open one, or the current (newest committed) one, so that a member
// that missed the commit can still escrow in it (late escrow, G5).
func (l *Ledger) receiptGeneration(n uint64) (*generation, error) {
	g := l.gen(n)
	if g == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownGeneration, n)
	}
	switch {
	case g.state == StateOpen || g == l.current():
		return g, nil
	case g.state == StateAborted:
		return nil, fmt.Errorf("%w: %d", ErrGenerationAborted, n)
	case g.state == StateRetired:
		return nil, fmt.Errorf("%w: %d", ErrGenerationRetired, n)
	default:
		return nil, fmt.Errorf("%w: generation %d is committed but not current", ErrGenerationNotOpen, n)
	}
}

// receiptParties checks that a receipt (owner, holder) may be recorded in
// g, which is open or current: neither party removed or lapsed, both in
// M(g), and, for the current (committed) generation, both active. A joining
// or rejected peer can be in M(current) only if it lapsed and was invited
// again; it escrows in the generation it joins through, not in the old one.
func (l *Ledger) receiptParties(g *generation, owner, holder peer.ID) error {
	om, hm := l.members[owner], l.members[holder]
	switch {
	case om != nil && om.status == StatusRemoved:
		return fmt.Errorf("%w: %s", ErrOwnerRemoved, owner)
	case om != nil && om.status == StatusLapsed:
		return fmt.Errorf("%w: %s", ErrOwnerLapsed, owner)
	case hm != nil && hm.status == StatusRemoved:
		return fmt.Errorf("%w: %s", ErrHolderRemoved, holder)
	case hm != nil && hm.status == StatusLapsed:
		return fmt.Errorf("%w: %s", ErrHolderLapsed, holder)
	case !g.has(owner):
		return fmt.Errorf("%w: %s not in generation %d", ErrOwnerNotInGeneration, owner, g.num)
	case !g.has(holder):
		return fmt.Errorf("%w: %s not in generation %d", ErrHolderNotInGeneration, holder, g.num)
	}
	if g.state == StateCommitted {
		for _, p := range []peer.ID{owner, holder} {
			if m := l.members[p]; m == nil || m.status != StatusActive {
				return fmt.Errorf("%w: late receipt into committed generation %d: %s is not active", ErrNotActive, g.num, p)
			}
		}
	}
	return nil
}

// verifyReceipt checks holder's signature over ReceiptMessage with the public
// key embedded in holder's peer ID.
func verifyReceipt(clusterID string, gen uint64, owner, holder peer.ID, split SplitID, digest, sig []byte) error {
	pk, err := holder.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: holder key: %v", ErrBadSignature, err)
	}
	ok, err := pk.Verify(ReceiptMessage(clusterID, gen, owner, holder, split, digest), sig)
	if err != nil || !ok {
		return fmt.Errorf("%w: by holder %s", ErrBadSignature, holder)
	}
	return nil
}

// commitReady reports whether open generation g meets the commit rule: a
// majority of M(g) escrowed in g, and every joiner escrowed (J2) and a
// holder for a majority of M(g) (J3).
func (g *generation) commitReady() bool {
	escrowed := 0
	for _, o := range g.members {
		if g.escrowed(o) {
			escrowed++
		}
	}
	if escrowed < g.threshold {
		return false
	}
	for _, j := range g.joiners {
		if !g.escrowed(j) || g.holds(j) < g.threshold {
			return false
		}
	}
	return true
}

// maybeCommit derives the commit of g after receipts were recorded.
func (l *Ledger) maybeCommit(now int64, g *generation, res *Result) {
	if g.state != StateOpen || !g.commitReady() {
		return
	}
	next, err := g.state.Next(EventCommit)
	if err != nil {
		return
	}
	g.state, g.committedAt = next, now
	res.Committed = g.num
	for _, j := range g.joiners {
		if m := l.members[j]; m != nil && m.status == StatusJoining {
			l.setStatus(j, MemberCommit).admittedAt = now
			res.Admitted = append(res.Admitted, j)
		}
	}
	l.retireEligible(now, res)
}

func (l *Ledger) abortGenerationCmd(now int64, author peer.ID, c *pb.AbortGeneration) (Result, error) {
	g := l.gen(c.GetGeneration())
	if g == nil {
		return Result{}, fmt.Errorf("%w: %d", ErrUnknownGeneration, c.GetGeneration())
	}
	if _, err := g.state.Next(EventAbort); err != nil {
		return Result{}, err
	}
	if err := g.abortAllowed(now, author, l.members[author].status); err != nil {
		return Result{}, err
	}
	var res Result
	for _, j := range g.joiners {
		res.Rejected = append(res.Rejected, g.shortfall(j))
	}
	l.abort(now, g)
	for _, s := range res.Rejected {
		if m := l.members[s.Joiner]; m != nil && m.status == StatusJoining {
			l.setStatus(s.Joiner, MemberAbort).reason = s.String()
			delete(l.keyChecks, s.Joiner)
		}
	}
	res.Aborted = g.num
	return res, nil
}

// abortAllowed says whether author may abort open generation g now: after
// its deadline (G3); at any time if author is one of its joiners (it gives
// up); or, for an active member, once JoinProgressTimeout has passed since
// g opened and one of its joiners has recorded no receipt as owner (the
// joiner disappeared: joins must not wedge for the whole deadline).
func (g *generation) abortAllowed(now int64, author peer.ID, status MemberStatus) error {
	if now >= g.deadline {
		return nil
	}
	if status == StatusJoining {
		if slices.Contains(g.joiners, author) {
			return nil
		}
		return fmt.Errorf("%w: %s is not a joiner of generation %d", ErrUnauthorized, author, g.num)
	}
	if now-g.openedAt >= int64(JoinProgressTimeout) {
		for _, j := range g.joiners {
			if len(g.receipts[j]) == 0 {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: generation %d deadline is %s", ErrDeadlineNotReached, g.num, fromNanos(g.deadline).Format("2006-01-02T15:04:05.000Z07:00"))
}

// abort moves open g to aborted and deletes its receipts (G3). Joiners are
// the caller's business.
func (l *Ledger) abort(now int64, g *generation) {
	next, err := g.state.Next(EventAbort)
	if err != nil {
		return
	}
	g.state, g.abortedAt = next, now
	g.receipts = make(map[peer.ID]map[peer.ID]receipt)
	g.splits = make(map[peer.ID]SplitID)
}

func (l *Ledger) retireGenerationCmd(now int64, c *pb.RetireGeneration) (Result, error) {
	g := l.gen(c.GetGeneration())
	if g == nil {
		return Result{}, fmt.Errorf("%w: %d", ErrUnknownGeneration, c.GetGeneration())
	}
	if _, err := g.state.Next(EventRetire); err != nil {
		return Result{}, err
	}
	if cur := l.current(); cur == g {
		return Result{}, fmt.Errorf("%w: %d", ErrRetireCurrent, g.num)
	}
	if blockers := l.retentionBlockers(g); len(blockers) > 0 {
		return Result{}, fmt.Errorf("%w: %d member(s) not escrowed with margin in a newer committed generation, first %s", ErrRetentionRequired, len(blockers), blockers[0])
	}
	var res Result
	l.retire(now, g)
	res.Retired = []uint64{g.num}
	l.retireEligible(now, &res)
	return res, nil
}

// retentionBlockers returns the active members of the current generation
// whose retention anchor is not newer than h (G4): they are not escrowed
// with margin in a committed generation newer than h (or, having a margin
// nowhere, not escrowed in one at all). h may be retired exactly when the
// list is empty and h is not current. The list follows cur.members, which
// is sorted.
func (l *Ledger) retentionBlockers(h *generation) []peer.ID {
	cur := l.current()
	if cur == nil {
		return nil
	}
	var out []peer.ID
	for _, m := range cur.members {
		if st := l.members[m]; st == nil || st.status != StatusActive {
			continue
		}
		if l.retentionAnchor(m) <= h.num {
			out = append(out, m)
		}
	}
	return out
}

// newestEscrow is the newest committed generation in which owner is
// escrowed, 0 if none. Unlock (Coverage), lapse and the retention bound's
// grace go by it.
func (l *Ledger) newestEscrow(owner peer.ID) uint64 {
	for i := len(l.gens) - 1; i >= 0; i-- {
		g := l.gens[i]
		if g.state == StateCommitted && g.escrowed(owner) {
			return g.num
		}
	}
	return 0
}

// retentionAnchor is the oldest generation G4 keeps for owner: the newest
// committed generation in which owner is escrowed with margin (see
// generation.escrowedWithMargin), so that one holder lost there, owner's
// own store included, still leaves a threshold in some retained
// generation. An owner with a margin nowhere falls back to its newest
// escrow (0 if none), as before margins counted, so that no generation is
// kept forever because of it; the retention bound overrides either way.
func (l *Ledger) retentionAnchor(owner peer.ID) uint64 {
	for i := len(l.gens) - 1; i >= 0; i-- {
		g := l.gens[i]
		if g.state == StateCommitted && g.escrowedWithMargin(owner) {
			return g.num
		}
	}
	return l.newestEscrow(owner)
}

// retireEligible first applies the retention bound (retiring generations
// too far behind the current one and lapsing the members whose newest
// escrow they were), then retires every committed generation older than the
// current one that G4 no longer requires: those older than every active
// member's retention anchor. It is run after every commit,
// removal, late escrow into the current generation and SetRetention, the
// only events that can make a generation retirable.
func (l *Ledger) retireEligible(now int64, res *Result) {
	cur := l.current()
	if cur == nil {
		return
	}
	defer func() { slices.Sort(res.Retired) }()
	l.applyBound(now, res)
	// floor = min over active members of M(cur) of their retention anchor
	// (the newest generation escrowing them with margin, else their newest
	// escrow).
	var floor uint64 = cur.num
	for _, m := range cur.members {
		if st := l.members[m]; st == nil || st.status != StatusActive {
			continue
		}
		if e := l.retentionAnchor(m); e < floor {
			floor = e
		}
	}
	for _, g := range l.gens {
		if g.num >= floor {
			break
		}
		if g.state == StateCommitted {
			l.retire(now, g)
			res.Retired = append(res.Retired, g.num)
		}
	}
}

func (l *Ledger) retire(now int64, g *generation) {
	next, err := g.state.Next(EventRetire)
	if err != nil {
		return
	}
	g.state, g.retiredAt = next, now
	g.receipts = make(map[peer.ID]map[peer.ID]receipt)
	g.splits = make(map[peer.ID]SplitID)
}

// leave is a member removing itself (R1): immediate.
func (l *Ledger) leave(now int64, c *pb.RemoveMember) (Result, error) {
	p := peer.ID(c.GetPeer())
	if m := l.members[p]; m.status == StatusActive && l.countActive() == 1 {
		return Result{}, fmt.Errorf("%w: %s", ErrLastMember, p)
	}
	return l.revoke(now, p, now+c.GetTimeout()), nil
}

// vote records author's vote on target (R2). A remove vote suspends target
// at once (holders keep its envelopes and stop serving them); when the
// remove votes of active members reach a majority of the active members
// other than target, the removal is final, as a leave. A reinstate vote
// counts toward lifting a suspension; a majority lifts it and clears every
// vote. Each voter's newer vote replaces its older one.
func (l *Ledger) vote(now int64, author peer.ID, c *pb.Vote) (Result, error) {
	target := peer.ID(c.GetTarget())
	if target == author {
		return Result{}, fmt.Errorf("%w: %s", ErrSelfVote, target)
	}
	// Joining, active and lapsed members may be voted on (a lapsed one can
	// be removed for good).
	m := l.members[target]
	switch {
	case m == nil || m.status == StatusRejected:
		return Result{}, fmt.Errorf("%w: %s", ErrNotMember, target)
	case m.status == StatusRemoved:
		return Result{}, fmt.Errorf("%w: %s", ErrMemberRemoved, target)
	}
	var res Result
	if c.GetReinstate() {
		if !m.suspended() {
			return Result{}, fmt.Errorf("%w: %s", ErrNotSuspended, target)
		}
		delete(m.removeVotes, author)
		m.reinstateVotes = addVote(m.reinstateVotes, author)
		if l.countVotes(target, m.reinstateVotes) >= l.VotesNeeded(target) || len(m.removeVotes) == 0 {
			m.removeVotes, m.reinstateVotes = nil, nil
			res.Reinstated = target
		}
		return res, nil
	}
	if m.status == StatusActive && l.countActive() == 1 {
		return Result{}, fmt.Errorf("%w: %s", ErrLastMember, target)
	}
	if !m.suspended() {
		res.Suspended = target
	}
	delete(m.reinstateVotes, author)
	m.removeVotes = addVote(m.removeVotes, author)
	if l.countVotes(target, m.removeVotes) >= l.VotesNeeded(target) {
		r := l.revoke(now, target, now+c.GetTimeout())
		r.Suspended = res.Suspended
		return r, nil
	}
	return res, nil
}

func addVote(set map[peer.ID]struct{}, p peer.ID) map[peer.ID]struct{} {
	if set == nil {
		set = make(map[peer.ID]struct{})
	}
	set[p] = struct{}{}
	return set
}

// countVotes counts the votes in set cast by active members other than
// target.
func (l *Ledger) countVotes(target peer.ID, set map[peer.ID]struct{}) int {
	n := 0
	for v := range set {
		if m := l.members[v]; v != target && m != nil && m.status == StatusActive {
			n++
		}
	}
	return n
}

// VotesNeeded is the number of votes that decide target's removal or
// reinstatement: a majority of the active members other than target.
func (l *Ledger) VotesNeeded(target peer.ID) int {
	others := l.countActive()
	if m := l.members[target]; m != nil && m.status == StatusActive {
		others--
	}
	return others/2 + 1
}

// revoke removes p for good (R1): every receipt where it is owner or holder
// is deleted (so no holder may serve its envelopes and it no longer counts
// as a holder), its key-check value is dropped, an open generation that
// contains it is aborted, and a generation without it is opened (if at
// least 2 members remain).
func (l *Ledger) revoke(now int64, p peer.ID, deadline int64) Result {
	m := l.setStatus(p, MemberRemove)
	res := Result{Removed: p}
	m.removedAt = now
	m.removeVotes, m.reinstateVotes = nil, nil
	delete(l.keyChecks, p)
	for _, g := range l.gens {
		delete(g.receipts, p)
		delete(g.splits, p)
		for _, byHolder := range g.receipts {
			delete(byHolder, p)
		}
	}
	if g := l.open(); g != nil && g.has(p) {
		l.abort(now, g)
		res.Aborted = g.num
		// Its other joiners stay joining and are carried into the new
		// generation below.
	}
	if l.open() == nil {
		res.Opened = l.openGeneration(now, deadline)
	}
	l.retireEligible(now, &res)
	return res
}

func (l *Ledger) setAddrs(c *pb.SetAddrs) (Result, error) {
	p := peer.ID(c.GetPeer())
	if err := l.memberErr(p); err != nil {
		return Result{}, err
	}
	l.members[p].addrs = slices.Clone(c.GetAddrs())
	return Result{}, nil
}

func (l *Ledger) recordKeyCheck(c *pb.RecordKeyCheck) (Result, error) {
	owner := peer.ID(c.GetOwner())
	if err := l.memberErr(owner); err != nil {
		return Result{}, err
	}
	if prev, ok := l.keyChecks[owner]; ok {
		if !bytes.Equal(prev, c.GetValue()) {
			return Result{}, fmt.Errorf("%w: %s", ErrKeyCheckMismatch, owner)
		}
		return Result{}, nil
	}
	escrowed := false
	for _, g := range l.gens {
		if g.state.Live() && g.escrowed(owner) {
			escrowed = true
			break
		}
	}
	if !escrowed {
		return Result{}, fmt.Errorf("%w: %s", ErrNotEscrowed, owner)
	}
	l.keyChecks[owner] = bytes.Clone(c.GetValue())
	return Result{}, nil
}

// Helpers.

func (g *generation) has(p peer.ID) bool {
	_, ok := g.memberSet[p]
	return ok
}

// escrowed: owner has at least t(g) receipts in g. All of owner's receipts
// in g are of one split (g.splits[owner]): a new split replaces them all.
func (g *generation) escrowed(owner peer.ID) bool { return len(g.receipts[owner]) >= g.threshold }

// marginNeed is how many receipts of one split an owner needs in g to be
// escrowed with margin: min(t(g)+1, |M(g)|).
func (g *generation) marginNeed() int { return min(g.threshold+1, len(g.members)) }

// escrowedWithMargin: owner's receipts in g (of its one split) number at
// least marginNeed, so it can lose any one holder, itself included, and
// still have t(g) shares (G4). In a generation where t(g) = |M(g)| (one
// or two members) it is the same as escrowed.
func (g *generation) escrowedWithMargin(owner peer.ID) bool {
	return len(g.receipts[owner]) >= g.marginNeed()
}

// holds counts the owners of g for which h is a recorded holder.
func (g *generation) holds(h peer.ID) int {
	n := 0
	for _, byHolder := range g.receipts {
		if _, ok := byHolder[h]; ok {
			n++
		}
	}
	return n
}

func (g *generation) shortfall(j peer.ID) Shortfall {
	s := Shortfall{Joiner: j, Generation: g.num, Needed: g.threshold}
	for _, p := range g.members {
		if _, ok := g.receipts[j][p]; ok {
			s.HoldersAcked++
		} else {
			s.MissingHolders = append(s.MissingHolders, p)
		}
		if _, ok := g.receipts[p][j]; ok {
			s.OwnersHeld++
		} else {
			s.MissingOwners = append(s.MissingOwners, p)
		}
		if g.escrowed(p) {
			s.MembersEscrowed++
		}
	}
	return s
}

func (l *Ledger) gen(n uint64) *generation {
	if n == 0 || n > uint64(len(l.gens)) {
		return nil
	}
	return l.gens[n-1]
}

// open returns the open generation, or nil.
func (l *Ledger) open() *generation {
	for i := len(l.gens) - 1; i >= 0; i-- {
		if l.gens[i].state == StateOpen {
			return l.gens[i]
		}
	}
	return nil
}

// current returns the newest committed generation, or nil.
func (l *Ledger) current() *generation {
	for i := len(l.gens) - 1; i >= 0; i-- {
		if l.gens[i].state == StateCommitted {
			return l.gens[i]
		}
	}
	return nil
}

func (l *Ledger) countActive() int {
	n := 0
	for _, m := range l.members {
		if m.status == StatusActive {
			n++
		}
	}
	return n
}

func sortedKeys[V any](m map[peer.ID]V) []peer.ID {
	out := make([]peer.ID, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
