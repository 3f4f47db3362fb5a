package consensus

import (
	"fmt"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// admission is one node's answer to "may this peer speak Raft to me?" (rules
// S1 and S8). The stream gate, the RPC guard and the forward handler all ask
// it afresh each time, and it caches nothing: when the node drops a peer from
// its allow-list, the peer's next RPC is refused, on a pooled stream too.
type admission struct {
	// raft returns the local Raft, or nil before it has started.
	raft func() *raft.Raft
	// allowUnconfigured admits peers while this node has no configuration.
	allowUnconfigured func(peer.ID) bool
	// allowMember admits AppendEntries and InstallSnapshot from peers that
	// are not voters of this node's (possibly stale) configuration.
	allowMember func(peer.ID) bool
	// deny refuses peers whatever else says.
	deny func(peer.ID) bool
}

func (a *admission) denied(p peer.ID) bool { return a.deny != nil && a.deny(p) }

func call(f func(peer.ID) bool, p peer.ID) bool { return f != nil && f(p) }

// servers returns the latest configuration's servers, or ok = false before
// Raft has started.
func (a *admission) servers() (servers []raft.Server, ok bool) {
	r := a.raft()
	if r == nil {
		return nil, false
	}
	return r.GetConfiguration().Configuration().Servers, true
}

// stream is the S1 gate, run when p opens a Raft stream: p may if it is a
// server of the latest configuration, or, while this node has none, if
// allowUnconfigured admits it, or else if allowMember does. Every RPC on the
// stream is then checked by rpc.
func (a *admission) stream(p peer.ID) bool {
	if a.denied(p) {
		return false
	}
	servers, ok := a.servers()
	if !ok {
		return false
	}
	if len(servers) == 0 {
		return call(a.allowUnconfigured, p)
	}
	id := raft.ServerID(p.String())
	for _, s := range servers {
		if s.ID == id {
			return true
		}
	}
	return call(a.allowMember, p)
}

// rpc is rule S8, run on every RPC before Raft reads it. The RPC must name
// its sender, the stream's authenticated peer, in every field hashicorp/raft
// takes an identity from (header ID and Addr, Leader, Candidate), because
// Raft believes those fields. Then:
//   - a voter of the latest configuration may send any RPC;
//   - with no configuration yet (a joiner waiting for its first entries), a
//     peer allowUnconfigured admits may send AppendEntries and
//     InstallSnapshot;
//   - otherwise a peer allowMember admits may send AppendEntries and
//     InstallSnapshot: a node that missed a configuration change (offline
//     when a member was promoted) must follow a leader its stale
//     configuration calls a non-voter or does not know, or it could never
//     catch up while that leader leads;
//   - nobody else may send anything: RequestVote, RequestPreVote and
//     TimeoutNow come only from voters.
func (a *admission) rpc(p peer.ID, in *rpcInfo) error {
	if err := a.identity(in); err != nil {
		return err
	}
	if a.denied(p) {
		return fmt.Errorf("%w: denied", errNotVoter)
	}
	servers, ok := a.servers()
	if !ok {
		return fmt.Errorf("%w: Raft is not running", errNotVoter)
	}
	id := raft.ServerID(in.from)
	for _, s := range servers {
		if s.ID == id && s.Suffrage == raft.Voter {
			return nil
		}
	}
	if in.fromLeader() {
		if len(servers) == 0 && call(a.allowUnconfigured, p) {
			return nil
		}
		if len(servers) > 0 && call(a.allowMember, p) {
			return nil
		}
	}
	return errNotVoter
}

// identity checks that the RPC names in.from, its authenticated sender, in the
// header's ID and Addr (both required: hashicorp/raft v1.8 always sends
// them, and Raft takes the leader's and the candidate's identity from them)
// and in its Leader or Candidate field when it has one.
func (a *admission) identity(in *rpcInfo) error {
	self := in.from
	if self == "" {
		return fmt.Errorf("%w: the stream's peer is unknown", errForeignHeader)
	}
	if string(in.header.ID) != self || string(in.header.Addr) != self || (len(in.named) > 0 && string(in.named) != self) {
		return errForeignHeader
	}
	return nil
}
