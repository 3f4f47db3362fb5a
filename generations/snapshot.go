package generations

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// Snapshot returns the whole state, encoded deterministically: the same
// state always gives the same bytes (members, invites, receipts and key
// checks are sorted; no map order leaks). It holds no share or envelope
// contents, only digests and signatures.
func (l *Ledger) Snapshot() ([]byte, error) {
	s := &pb.Snapshot{Version: SnapshotVersion, ClusterId: l.clusterID, MaxGenerationsBehind: l.maxBehind, LapseGraceMs: l.graceMs, LastNow: l.lastNow}
	for _, a := range sortedKeys(l.seqs) {
		s.Seqs = append(s.Seqs, &pb.AuthorSeq{Author: []byte(a), Seq: l.seqs[a]})
	}
	for _, p := range sortedKeys(l.members) {
		m := l.members[p]
		s.Members = append(s.Members, &pb.Member{
			Peer:       []byte(p),
			Status:     pb.MemberStatus(m.status),
			JoinedAt:   m.joinedAt,
			AdmittedAt: m.admittedAt,
			RemovedAt:  m.removedAt,
			Addrs:      slices.Clone(m.addrs),
			Reason:     m.reason,

			LapsedAt:         m.lapsedAt,
			LapsedGeneration: m.lapsedGen,
			LapsedThrough:    m.lapsedThrough,
			RemoveVotes:      peersToBytes(sortedKeys(m.removeVotes)),
			ReinstateVotes:   peersToBytes(sortedKeys(m.reinstateVotes)),
		})
	}
	hashes := make([][DigestSize]byte, 0, len(l.invites))
	for h := range l.invites {
		hashes = append(hashes, h)
	}
	slices.SortFunc(hashes, func(a, b [DigestSize]byte) int { return bytes.Compare(a[:], b[:]) })
	for _, h := range hashes {
		inv := l.invites[h]
		s.Invites = append(s.Invites, &pb.Invite{
			Hash:      bytes.Clone(h[:]),
			Key:       bytes.Clone(inv.key),
			ExpiresAt: inv.expiresAt,
			Issuer:    []byte(inv.issuer),
			UsedBy:    []byte(inv.usedBy),
			UsedAt:    inv.usedAt,
			CreatedAt: inv.createdAt,
		})
	}
	for _, g := range l.gens {
		pg := &pb.Generation{
			Number:      g.num,
			State:       pb.GenerationState(g.state),
			Members:     peersToBytes(g.members),
			Threshold:   uint32(g.threshold),
			Joiners:     peersToBytes(g.joiners),
			Removals:    peersToBytes(g.removals),
			OpenedAt:    g.openedAt,
			Deadline:    g.deadline,
			CommittedAt: g.committedAt,
			AbortedAt:   g.abortedAt,
			RetiredAt:   g.retiredAt,
		}
		for _, o := range sortedKeys(g.receipts) {
			byHolder := g.receipts[o]
			sp := g.splits[o]
			for _, h := range sortedKeys(byHolder) {
				r := byHolder[h]
				pg.Receipts = append(pg.Receipts, &pb.StoredReceipt{
					Owner: []byte(o), Holder: []byte(h), Digest: bytes.Clone(r.digest[:]), Signature: bytes.Clone(r.sig),
					Split: bytes.Clone(sp[:]),
				})
			}
		}
		s.Generations = append(s.Generations, pg)
	}
	for _, o := range sortedKeys(l.keyChecks) {
		s.KeyChecks = append(s.KeyChecks, &pb.KeyCheck{Owner: []byte(o), Value: bytes.Clone(l.keyChecks[o])})
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(s)
}

// Restore replaces the whole state with a snapshot. The snapshot is checked
// for structural consistency (versions, sizes, peer IDs, states, thresholds,
// receipts only between members of live generations, at most one open
// generation); receipt signatures are not re-verified, since they were
// verified when first applied. On error the ledger is unchanged.
func (l *Ledger) Restore(data []byte) error {
	if len(data) > MaxSnapshotSize {
		return fmt.Errorf("%w: %d bytes", ErrBadSnapshot, len(data))
	}
	s := new(pb.Snapshot)
	if err := proto.Unmarshal(data, s); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if s.GetVersion() != SnapshotVersion {
		return fmt.Errorf("%w: snapshot version %d", ErrUnsupportedVersion, s.GetVersion())
	}
	n, err := fromSnapshot(s)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSnapshot, err)
	}
	*l = *n
	return nil
}

func fromSnapshot(s *pb.Snapshot) (*Ledger, error) {
	l := New()
	if s.GetClusterId() != "" {
		if err := validClusterID(s.GetClusterId()); err != nil {
			return nil, err
		}
	} else if len(s.GetMembers())+len(s.GetInvites())+len(s.GetGenerations())+len(s.GetKeyChecks()) > 0 {
		return nil, fmt.Errorf("state without a cluster ID")
	}
	l.clusterID = s.GetClusterId()
	if n := s.GetMaxGenerationsBehind(); n > MaxGenerationsBehindLimit {
		return nil, fmt.Errorf("%w: %d", ErrBadRetention, n)
	}
	l.maxBehind = s.GetMaxGenerationsBehind()
	if ms := s.GetLapseGraceMs(); ms > uint64(MaxLapseGrace.Milliseconds()) {
		return nil, fmt.Errorf("%w: lapse_grace_ms %d", ErrBadRetention, ms)
	}
	l.graceMs = s.GetLapseGraceMs()
	if s.GetLastNow() < 0 {
		return nil, fmt.Errorf("%w: last_now %d", ErrBadTime, s.GetLastNow())
	}
	l.lastNow = s.GetLastNow()
	for i, as := range s.GetSeqs() {
		if err := validPeer("author", as.GetAuthor()); err != nil {
			return nil, fmt.Errorf("seq %d: %w", i, err)
		}
		a := peer.ID(as.GetAuthor())
		if i > 0 && peer.ID(s.GetSeqs()[i-1].GetAuthor()) >= a {
			return nil, fmt.Errorf("seqs not strictly sorted")
		}
		if as.GetSeq() == 0 {
			return nil, fmt.Errorf("seq %d: zero", i)
		}
		l.seqs[a] = as.GetSeq()
	}
	for i, m := range s.GetMembers() {
		if err := validPeer("member", m.GetPeer()); err != nil {
			return nil, fmt.Errorf("member %d: %w", i, err)
		}
		p := peer.ID(m.GetPeer())
		if _, dup := l.members[p]; dup {
			return nil, fmt.Errorf("member %d: duplicate", i)
		}
		st := MemberStatus(m.GetStatus())
		if st < StatusJoining || st > StatusLapsed || int32(m.GetStatus()) != int32(st) {
			return nil, fmt.Errorf("member %d: bad status %d", i, m.GetStatus())
		}
		if err := validAddrs(m.GetAddrs()); err != nil {
			return nil, fmt.Errorf("member %d: %w", i, err)
		}
		rv, err := voteSet("remove_votes", m.GetRemoveVotes())
		if err != nil {
			return nil, fmt.Errorf("member %d: %w", i, err)
		}
		iv, err := voteSet("reinstate_votes", m.GetReinstateVotes())
		if err != nil {
			return nil, fmt.Errorf("member %d: %w", i, err)
		}
		if len(iv) > 0 && len(rv) == 0 {
			return nil, fmt.Errorf("member %d: reinstate votes without a suspension", i)
		}
		l.members[p] = &member{
			status: st, joinedAt: m.GetJoinedAt(), admittedAt: m.GetAdmittedAt(), removedAt: m.GetRemovedAt(),
			addrs: slices.Clone(m.GetAddrs()), reason: m.GetReason(),
			lapsedAt: m.GetLapsedAt(), lapsedGen: m.GetLapsedGeneration(), lapsedThrough: m.GetLapsedThrough(),
			removeVotes: rv, reinstateVotes: iv,
		}
	}
	if l.clusterID != "" && l.countActive() == 0 {
		return nil, fmt.Errorf("no active member")
	}
	for i, inv := range s.GetInvites() {
		if len(inv.GetHash()) != DigestSize {
			return nil, fmt.Errorf("invite %d: %w", i, ErrBadInviteHash)
		}
		h := [DigestSize]byte(inv.GetHash())
		if _, dup := l.invites[h]; dup {
			return nil, fmt.Errorf("invite %d: duplicate", i)
		}
		if err := validPeer("issuer", inv.GetIssuer()); err != nil {
			return nil, fmt.Errorf("invite %d: %w", i, err)
		}
		if len(inv.GetUsedBy()) > 0 {
			if err := validPeer("used_by", inv.GetUsedBy()); err != nil {
				return nil, fmt.Errorf("invite %d: %w", i, err)
			}
		}
		if len(inv.GetKey()) != InviteKeySize {
			return nil, fmt.Errorf("invite %d: %w", i, ErrBadInviteKey)
		}
		l.invites[h] = &invite{
			key:       bytes.Clone(inv.GetKey()),
			expiresAt: inv.GetExpiresAt(), issuer: peer.ID(inv.GetIssuer()), usedBy: peer.ID(inv.GetUsedBy()),
			usedAt: inv.GetUsedAt(), createdAt: inv.GetCreatedAt(),
		}
	}
	open := 0
	for i, pg := range s.GetGenerations() {
		g, err := generationFromSnapshot(pg, uint64(i)+1)
		if err != nil {
			return nil, fmt.Errorf("generation %d: %w", i+1, err)
		}
		if g.state == StateOpen {
			open++
		}
		l.gens = append(l.gens, g)
	}
	if open > 1 {
		return nil, fmt.Errorf("%d open generations", open)
	}
	// No receipt of a removed party (R1) or of a lapsed owner.
	for _, g := range l.gens {
		for _, o := range sortedKeys(g.receipts) {
			if m := l.members[o]; m != nil && (m.status == StatusRemoved || m.status == StatusLapsed) {
				return nil, fmt.Errorf("generation %d: receipt of %s owner %s", g.num, m.status, o)
			}
			for _, h := range sortedKeys(g.receipts[o]) {
				if m := l.members[h]; m != nil && m.status == StatusRemoved {
					return nil, fmt.Errorf("generation %d: receipt held by a removed member", g.num)
				}
			}
		}
	}
	for i, kc := range s.GetKeyChecks() {
		if err := validPeer("owner", kc.GetOwner()); err != nil {
			return nil, fmt.Errorf("key check %d: %w", i, err)
		}
		if n := len(kc.GetValue()); n == 0 || n > MaxKeyCheckSize {
			return nil, fmt.Errorf("key check %d: %w", i, ErrBadKeyCheck)
		}
		o := peer.ID(kc.GetOwner())
		if _, dup := l.keyChecks[o]; dup {
			return nil, fmt.Errorf("key check %d: duplicate", i)
		}
		l.keyChecks[o] = bytes.Clone(kc.GetValue())
	}
	return l, nil
}

func generationFromSnapshot(pg *pb.Generation, num uint64) (*generation, error) {
	if pg.GetNumber() != num {
		return nil, fmt.Errorf("%w: number %d at position %d", ErrBadGeneration, pg.GetNumber(), num)
	}
	st := GenerationState(pg.GetState())
	if st < StateOpen || st > StateRetired || int32(pg.GetState()) != int32(st) {
		return nil, fmt.Errorf("%w: %d", ErrInvalidState, pg.GetState())
	}
	g := &generation{
		num: num, state: st, memberSet: make(map[peer.ID]struct{}),
		openedAt: pg.GetOpenedAt(), deadline: pg.GetDeadline(), committedAt: pg.GetCommittedAt(),
		abortedAt: pg.GetAbortedAt(), retiredAt: pg.GetRetiredAt(),
		receipts: make(map[peer.ID]map[peer.ID]receipt),
		splits:   make(map[peer.ID]SplitID),
	}
	var err error
	if g.members, err = sortedPeers("members", pg.GetMembers()); err != nil {
		return nil, err
	}
	if len(g.members) == 0 {
		return nil, fmt.Errorf("no members")
	}
	for _, p := range g.members {
		g.memberSet[p] = struct{}{}
	}
	g.threshold = len(g.members)/2 + 1
	if int(pg.GetThreshold()) != g.threshold {
		return nil, fmt.Errorf("threshold %d for %d members", pg.GetThreshold(), len(g.members))
	}
	if g.joiners, err = sortedPeers("joiners", pg.GetJoiners()); err != nil {
		return nil, err
	}
	for _, j := range g.joiners {
		if !g.has(j) {
			return nil, fmt.Errorf("joiner %s not a member", j)
		}
	}
	if g.removals, err = sortedPeers("removals", pg.GetRemovals()); err != nil {
		return nil, err
	}
	if len(pg.GetReceipts()) > 0 && !st.Live() {
		return nil, fmt.Errorf("receipts in a %s generation", st)
	}
	for i, r := range pg.GetReceipts() {
		o, h := peer.ID(r.GetOwner()), peer.ID(r.GetHolder())
		if !g.has(o) || !g.has(h) {
			return nil, fmt.Errorf("receipt %d: party not a member", i)
		}
		if len(r.GetDigest()) != DigestSize {
			return nil, fmt.Errorf("receipt %d: %w", i, ErrBadDigest)
		}
		if n := len(r.GetSignature()); n == 0 || n > MaxSignatureSize {
			return nil, fmt.Errorf("receipt %d: %w", i, ErrBadSignature)
		}
		if err := validSplit(r.GetSplit()); err != nil {
			return nil, fmt.Errorf("receipt %d: %w", i, err)
		}
		sp := SplitID(r.GetSplit())
		byHolder := g.receipts[o]
		if byHolder == nil {
			byHolder = make(map[peer.ID]receipt)
			g.receipts[o] = byHolder
			g.splits[o] = sp
		} else if g.splits[o] != sp {
			return nil, fmt.Errorf("receipt %d: %w: two splits for one owner", i, ErrSplitMismatch)
		}
		if _, dup := byHolder[h]; dup {
			return nil, fmt.Errorf("receipt %d: duplicate", i)
		}
		byHolder[h] = receipt{digest: [DigestSize]byte(r.GetDigest()), sig: bytes.Clone(r.GetSignature())}
	}
	return g, nil
}

// voteSet decodes a sorted list of voters.
func voteSet(what string, bs [][]byte) (map[peer.ID]struct{}, error) {
	ps, err := sortedPeers(what, bs)
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	set := make(map[peer.ID]struct{}, len(ps))
	for _, p := range ps {
		set[p] = struct{}{}
	}
	return set, nil
}

// sortedPeers decodes a strictly ascending list of peer IDs.
func sortedPeers(what string, bs [][]byte) ([]peer.ID, error) {
	out := make([]peer.ID, 0, len(bs))
	for i, b := range bs {
		if err := validPeer(what, b); err != nil {
			return nil, err
		}
		p := peer.ID(b)
		if i > 0 && out[i-1] >= p {
			return nil, fmt.Errorf("%s not strictly sorted", what)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func peersToBytes(ps []peer.ID) [][]byte {
	if len(ps) == 0 {
		return nil
	}
	out := make([][]byte, len(ps))
	for i, p := range ps {
		out[i] = []byte(p)
	}
	return out
}
