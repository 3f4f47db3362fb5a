package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
)

// IssuedInvite is an invite as its issuer hands it over: the token (a
// secret: give it to the joiner only) and when it expires.
type IssuedInvite struct {
	Token     string
	ExpiresAt time.Time
}

// Invite issues a single-use invite that expires after ttl (the configured
// InviteTTL when ttl is 0). Only the hash of its secret is recorded in the
// ledger. The token carries the cluster ID and the addresses of live members.
func (n *Node) Invite(ctx context.Context, ttl time.Duration) (IssuedInvite, error) {
	if ttl == 0 {
		ttl = n.cfg.InviteTTL
	}
	if ttl < MinInviteTTL || ttl > MaxInviteTTL {
		return IssuedInvite{}, fmt.Errorf("%w: an invite lives %s to %s, not %s", ErrBadInviteTTL, MinInviteTTL, MaxInviteTTL, ttl)
	}
	clusterID := n.ClusterID()
	if clusterID == "" {
		return IssuedInvite{}, ErrNotReady
	}
	now := n.now()
	inv, err := newInvite(clusterID, ttl, n.inviteAddrs(), now)
	if err != nil {
		return IssuedInvite{}, err
	}
	inv.Relays = n.inviteRelays()
	pub, _, err := inv.Key()
	if err != nil {
		return IssuedInvite{}, err
	}
	if err := n.apply(ctx, generations.NewAddInvite(inv.Hash(), pub, inv.ExpiresAt, n.host.ID(), now)); err != nil {
		return IssuedInvite{}, fmt.Errorf("record invite: %w", err)
	}
	log.Infow("issued invite", "expires", inv.ExpiresAt.Format(time.RFC3339))
	return IssuedInvite{Token: inv.Encode(), ExpiresAt: inv.ExpiresAt}, nil
}

// inviteAddrs lists this node's addresses first, then those of the other
// active members, so the joiner can dial whoever is up.
func (n *Node) inviteAddrs() []string {
	addrs := p2p.AddrInfoStrings(n.host)
	for _, m := range n.memberPeers() {
		id, err := peer.IDFromBytes(m.GetId())
		if err != nil || id == n.host.ID() {
			continue
		}
		addrs = append(addrs, m.GetAddrs()...)
	}
	if len(addrs) > 32 {
		addrs = addrs[:32]
	}
	return addrs
}

// inviteRelays names the relays a joiner behind NAT should use: this node's
// own relays, and this node itself when it is publicly reachable and relays
// for members.
func (n *Node) inviteRelays() []string {
	var out []string
	for _, r := range n.relays {
		if addrs, err := peer.AddrInfoToP2pAddrs(&r); err == nil {
			for _, a := range addrs {
				out = append(out, a.String())
			}
		}
	}
	if n.cfg.RelayService && p2p.Reachability(n.host) == p2p.ReachPublic {
		out = mergeStrings(out, p2p.AddrInfoStrings(n.host))
	}
	if len(out) > 16 {
		out = out[:16]
	}
	return out
}

// memberPeers returns the active and joining members with full /p2p/
// addresses, from the ledger and the peerstore.
func (n *Node) memberPeers() []*pb.Peer {
	var members []generations.Member
	n.view(func(l *generations.Ledger) { members = l.Members() })
	var out []*pb.Peer
	for _, m := range members {
		if m.Status != generations.StatusActive && m.Status != generations.StatusJoining {
			continue
		}
		var addrs []string
		if m.ID == n.host.ID() {
			addrs = p2p.AddrInfoStrings(n.host)
		} else {
			addrs = m.Addrs
			if len(addrs) == 0 {
				for _, a := range n.host.Peerstore().Addrs(m.ID) {
					addrs = append(addrs, a.String()+"/p2p/"+m.ID.String())
				}
			}
		}
		out = append(out, &pb.Peer{Id: []byte(m.ID), Addrs: addrs})
	}
	return out
}

// Remove revokes a member (rule R1): the ledger marks it removed at once and
// the leader takes it out of the Raft configuration.
// VoteResult is the ledger's view of a removal or a reinstatement right
// after this node's vote was applied (rule R2).
type VoteResult struct {
	Target peer.ID `json:"target"`
	// Kind is "remove" or "reinstate".
	Kind string `json:"kind"`
	// Votes counts the votes of this kind so far; Needed is a majority of
	// the other members.
	Votes  int `json:"votes"`
	Needed int `json:"needed"`
	// Final: for remove, the removal is final (R1); for reinstate, the
	// suspension is lifted.
	Final bool `json:"final"`
	// Status is the target's member status after the vote ("suspended",
	// "removed", "active", ...).
	Status string `json:"status"`
}

// Remove records this member's vote to remove p (rule R2). The first vote
// suspends p at once: holders keep its envelopes but stop serving them. A
// majority of the other members' votes makes the removal final.
func (n *Node) Remove(ctx context.Context, p peer.ID) (VoteResult, error) {
	if err := n.checkMember(ctx, p); err != nil {
		return VoteResult{}, err
	}
	return n.vote(ctx, p, true)
}

// Reinstate records this member's vote to lift p's suspension (rule R2).
func (n *Node) Reinstate(ctx context.Context, p peer.ID) (VoteResult, error) {
	if err := n.checkMember(ctx, p); err != nil {
		return VoteResult{}, err
	}
	return n.vote(ctx, p, false)
}

// ErrBadInviteTTL: an invite lifetime outside MinInviteTTL..MaxInviteTTL.
var ErrBadInviteTTL = errors.New("invite lifetime out of bounds")

// Leave removes this node from the cluster at once (rule R1) and waits until
// it is out of the Raft configuration. The node should be closed afterwards.
func (n *Node) Leave(ctx context.Context) error {
	now := n.now()
	if err := n.apply(ctx, generations.NewRemoveMember(n.host.ID(), now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		return err
	}
	n.pokeReconciler()
	return n.waitOutOfRaft(ctx, n.host.ID())
}

func (n *Node) waitOutOfRaft(ctx context.Context, p peer.ID) error {
	if err := n.waitUntil(ctx, func() bool { return !n.cons.InConfiguration(p) }); err != nil {
		return fmt.Errorf("%s is removed from the ledger but still in the Raft configuration: %w", p, err)
	}
	return nil
}

func (n *Node) memberStatus(p peer.ID) generations.MemberStatus {
	st := generations.StatusUnknown
	n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(p); ok {
			st = m.Status
		}
	})
	return st
}

func (n *Node) isVoter() bool {
	for _, s := range n.cons.Servers() {
		if s.ID == n.host.ID() {
			return s.Voter
		}
	}
	return false
}

// WaitReady waits until the node is a voting member that knows the leader.
func (n *Node) WaitReady(ctx context.Context) error {
	return n.waitUntil(ctx, func() bool {
		return n.isVoter() && n.cons.Leader() != "" && n.memberStatus(n.host.ID()) == generations.StatusActive
	})
}

// vote records this node's vote on p and reports the ledger's view after
// it. A vote that makes a removal final waits until p is out of the Raft
// configuration.
// checkMember checks that p is in the ledger, after catching this node's
// ledger up with the leader if p is not in it yet (a node that restarted
// unlocks before its ledger has caught up).
func (n *Node) checkMember(ctx context.Context, p peer.ID) error {
	if n.memberStatus(p) != generations.StatusUnknown {
		return nil
	}
	if err := n.cons.Fresh(ctx); err != nil {
		return fmt.Errorf("%w: %s (and this node cannot confirm its ledger is current: %v)", ErrUnknownMember, p, err)
	}
	if n.memberStatus(p) == generations.StatusUnknown {
		return fmt.Errorf("%w: %s", ErrUnknownMember, p)
	}
	return nil
}

func (n *Node) vote(ctx context.Context, p peer.ID, remove bool) (VoteResult, error) {
	now := n.now()
	if err := n.apply(ctx, generations.NewVote(p, !remove, now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		return VoteResult{}, err
	}
	vr := VoteResult{Target: p, Kind: "remove"}
	if !remove {
		vr.Kind = "reinstate"
	}
	n.view(func(l *generations.Ledger) {
		m, _ := l.Member(p)
		vr.Needed = m.VotesNeeded
		vr.Status = memberStatusName(m)
		switch {
		case remove && m.Status == generations.StatusRemoved:
			vr.Final, vr.Votes = true, vr.Needed
		case remove:
			vr.Votes = len(m.RemoveVotes)
		case !m.Suspended:
			vr.Final, vr.Votes = true, vr.Needed
		default:
			vr.Votes = len(m.ReinstateVotes)
		}
	})
	n.pokeReconciler()
	if remove && vr.Final {
		return vr, n.waitOutOfRaft(ctx, p)
	}
	return vr, nil
}

// memberStatusName is a member's status as operators see it: "suspended"
// for an active or joining member with remove votes against it.
func memberStatusName(m generations.Member) string {
	if m.Suspended && m.Status != generations.StatusRemoved {
		return "suspended"
	}
	if m.Status == generations.StatusUnknown {
		return "unknown"
	}
	return m.Status.String()
}
