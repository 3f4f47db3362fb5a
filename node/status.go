package node

import (
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/p2p"
)

// LockState is the state of a node's key (rules K2, U1).
type LockState string

// The lock states.
const (
	// LockUnlocked: K is in memory and escrowed; keys are released.
	LockUnlocked LockState = "unlocked"
	// LockLocked: K is not in memory; the node gathers its shares.
	LockLocked LockState = "locked"
	// LockUnescrowed: K is in memory but no committed generation holds a
	// threshold of its shares yet; no key is released.
	LockUnescrowed LockState = "unescrowed"
)

// Status is a snapshot of the node, the cluster and every member, as the
// CLI's `status --json` prints it.
type Status struct {
	PeerID     string         `json:"peer_id"`
	ClusterID  string         `json:"cluster_id"`
	Lock       LockState      `json:"lock"`
	Unlock     UnlockProgress `json:"unlock"`
	CatchingUp *CatchUp       `json:"catching_up"`
	LastAudit  *AuditReport   `json:"last_audit"`
	Addrs      []string       `json:"addrs"`
	// Reachability is AutoNAT's verdict: public, private or unknown.
	Reachability string           `json:"reachability"`
	Raft         RaftStatus       `json:"raft"`
	Generation   GenerationStatus `json:"generation"`
	Members      []MemberInfo     `json:"members"`
}

// RaftStatus is this node's view of Raft.
type RaftStatus struct {
	State          string `json:"state"`
	Leader         string `json:"leader"`
	Term           uint64 `json:"term"`
	CommitIndex    uint64 `json:"commit_index"`
	AppliedIndex   uint64 `json:"applied_index"`
	Voter          bool   `json:"voter"`
	RefusedStreams uint64 `json:"refused_streams"`
}

// GenerationStatus names the current (newest committed) generation and the
// open one, if any.
type GenerationStatus struct {
	Current *uint64         `json:"current"`
	Open    *OpenGeneration `json:"open"`
}

// OpenGeneration describes the generation being formed.
type OpenGeneration struct {
	Number    uint64    `json:"number"`
	Members   int       `json:"members"`
	Threshold int       `json:"threshold"`
	Deadline  time.Time `json:"deadline"`
}

// MemberInfo is one member's row.
type MemberInfo struct {
	PeerID           string  `json:"peer_id"`
	Status           string  `json:"status"`
	Voter            bool    `json:"voter"`
	Connection       string  `json:"connection"`
	EscrowGeneration *uint64 `json:"escrow_generation"`
	CatchingUp       bool    `json:"catching_up"`
	// Behind is how many committed generations this member's escrow lags
	// the current one; Reason explains a rejected or lapsed member.
	Behind     int      `json:"behind,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	SharesHeld int      `json:"shares_held"`
	Threshold  int      `json:"threshold"`
	Addrs      []string `json:"addrs,omitempty"`
	// Removal votes (rule R2): a member with remove votes is "suspended";
	// VotesNeeded (a majority of the other active members) decides either
	// way.
	RemoveVotes    []string `json:"remove_votes,omitempty"`
	ReinstateVotes []string `json:"reinstate_votes,omitempty"`
	VotesNeeded    int      `json:"votes_needed,omitempty"`
}

// Status reports the node's state.
func (n *Node) Status() Status {
	lock, progress := n.LockState()
	st := Status{
		PeerID:       n.host.ID().String(),
		Lock:         lock,
		Unlock:       progress,
		CatchingUp:   n.catchingUp(),
		LastAudit:    n.lastAuditReport(),
		Addrs:        p2p.AddrInfoStrings(n.host),
		Reachability: p2p.Reachability(n.host),
		Members:      []MemberInfo{},
	}
	voters := map[string]bool{}
	for _, s := range n.cons.Servers() {
		voters[s.ID.String()] = s.Voter
	}
	rs := n.cons.RaftState()
	st.Raft = RaftStatus{
		State:          strings.ToLower(n.cons.State()),
		Leader:         rs.Leader.String(),
		Term:           rs.Term,
		CommitIndex:    rs.CommitIndex,
		AppliedIndex:   rs.AppliedIndex,
		Voter:          voters[st.PeerID],
		RefusedStreams: n.cons.RefusedStreams(),
	}
	if n.cons.Leader() == "" {
		st.Raft.Leader = ""
	}
	n.view(func(l *generations.Ledger) {
		st.ClusterID = l.ClusterID()
		if g, ok := l.Current(); ok {
			num := g.Number
			st.Generation.Current = &num
		}
		if g, ok := l.Open(); ok {
			st.Generation.Open = &OpenGeneration{Number: g.Number, Members: len(g.Members), Threshold: g.Threshold, Deadline: g.Deadline}
		}
		for _, m := range l.Members() {
			ms := MemberInfo{
				PeerID:     m.ID.String(),
				Status:     memberStatusName(m),
				Voter:      voters[m.ID.String()],
				Connection: n.connectionType(m.ID),
				Addrs:      m.Addrs,
			}
			if m.Suspended {
				ms.RemoveVotes, ms.ReinstateVotes, ms.VotesNeeded = ids(m.RemoveVotes), ids(m.ReinstateVotes), m.VotesNeeded
			}
			c := l.Coverage(m.ID)
			ms.Behind, ms.Reason = int(c.Behind), m.Reason
			if c.Generation > 0 {
				g := c.Generation
				ms.EscrowGeneration = &g
				ms.SharesHeld, ms.Threshold = c.SharesHeld, c.Threshold
			}
			// A member of the current generation not yet escrowed in it
			// missed it (it was offline): it is catching up (G5).
			if cur, ok := l.Current(); ok && m.Status == generations.StatusActive && c.Generation < cur.Number {
				for _, id := range cur.Members {
					ms.CatchingUp = ms.CatchingUp || id == m.ID
				}
			}
			st.Members = append(st.Members, ms)
		}
	})
	if st.ClusterID == "" {
		// A node whose ledger has not caught up (no quorum reachable)
		// still knows its cluster from its disk, and its holders and
		// threshold from its last escrow (the unlock hint).
		st.ClusterID = n.localClusterID()
		if h, ok := n.loadUnlockHint(); ok && len(st.Members) == 0 {
			g := h.Generation
			for _, id := range h.Holders {
				row := MemberInfo{PeerID: id, Status: "unknown", Connection: "none"}
				if p, err := peer.Decode(id); err == nil {
					row.Connection = n.connectionType(p)
				}
				if id == st.PeerID {
					row.EscrowGeneration, row.Threshold = &g, h.Threshold
				}
				st.Members = append(st.Members, row)
			}
			if st.Unlock.Need == 0 {
				st.Unlock.Generation, st.Unlock.Need = g, h.Threshold
			}
		}
	}
	return st
}

// connectionType says how this node reaches a member: "self", "direct",
// "hole-punched", "relayed", or "none".
func (n *Node) connectionType(id peer.ID) string {
	if id == n.host.ID() {
		return "self"
	}
	return p2p.ConnType(n.host, id)
}

func (n *Node) lastAuditReport() *AuditReport { return n.lastAudit.Load() }
