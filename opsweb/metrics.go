package opsweb

import (
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/prometheus/client_golang/prometheus"
)

// namespace prefixes every metric this package defines.
const namespace = "p2pkey"

// Source is what the metrics and the status page read: the public API of
// node.Node. It is an interface so that one handler can follow a node across
// a restart in the same process (tests do); *node.Node satisfies it.
type Source interface {
	Status() node.Status
	Generations() []node.GenerationInfo
}

// hostSource is the optional part of a Source that has a libp2p host, for
// the connection gauges. *node.Node has one.
type hostSource interface {
	Host() host.Host
}

// lockStates, raftStates and connTypes are the label values exported with
// 0 or 1, so that a missing series never has to be read as "false".
var (
	lockStates = []node.LockState{node.LockUnlocked, node.LockLocked, node.LockUnescrowed}
	raftStates = []string{"leader", "follower", "candidate", "shutdown"}
	connTypes  = []string{p2p.ConnDirect, p2p.ConnHolePunched, p2p.ConnRelayed}
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

// The gauges read from the node at scrape time. docs/METRICS.md documents
// each; TestMetricsDocumented keeps the two in step.
var (
	descInfo          = desc("node_info", "Always 1; the labels name this node and its cluster.", "peer_id", "cluster_id")
	descLock          = desc("lock_state", "1 for this node's current lock state (unlocked, locked, unescrowed), 0 for the others.", "state")
	descUnlockHave    = desc("unlock_shares_gathered", "Shares of this node's key that it has gathered (or, unlocked, that are held) in generation unlock_generation.")
	descUnlockNeed    = desc("unlock_shares_needed", "Shares this node needs to rebuild its key: the threshold of generation unlock_generation (0 when unknown).")
	descUnlockGen     = desc("unlock_generation", "The generation whose shares this node gathers or last unlocked from (0 when none).")
	descGenCurrent    = desc("generation_current", "Number of the current (newest committed) generation; 0 before the first commit.")
	descGenOpen       = desc("generation_open", "Number of the generation being formed; 0 when none is open.")
	descGenOpenDL     = desc("generation_open_deadline_seconds", "Unix time by which the open generation must commit or be aborted; 0 when none is open.")
	descGenStates     = desc("generations", "How many generations the ledger knows, by state.", "state")
	descGenMembers    = desc("generation_members", "Members of each live (open or committed) generation.", "generation")
	descGenThreshold  = desc("generation_threshold", "Threshold of each live generation.", "generation")
	descGenEscrowed   = desc("generation_escrowed", "Owners escrowed in each live generation.", "generation")
	descGenHeld       = desc("generation_shares_held", "Shares of each owner held in each live generation (a row of the owner x holder matrix).", "generation", "owner")
	descMembers       = desc("members", "Members in the ledger, by status (active, suspended, removed, ...).", "status")
	descMemberConn    = desc("member_connected", "1 when this node has a live connection to the member (or the member is this node), 0 when it has none.", "peer_id")
	descMemberEscrow  = desc("member_escrow_generation", "Newest committed generation in which the member is escrowed; 0 when it is not escrowed.", "peer_id")
	descMemberHeld    = desc("member_shares_held", "Shares of the member's key held in its escrow generation.", "peer_id")
	descMemberThresh  = desc("member_shares_threshold", "Threshold of the member's escrow generation: the shares it needs to unlock.", "peer_id")
	descMemberCovered = desc("member_covered", "1 when the member's shares held reach its threshold (it can unlock), else 0.", "peer_id")
	descMemberBehind  = desc("member_behind_generations", "Committed generations by which the member's escrow lags the current one.", "peer_id")
	descMemberVoter   = desc("member_voter", "1 when the member is a Raft voter, else 0.", "peer_id")
	descRaftState     = desc("raft_state", "1 for this node's Raft state (leader, follower, candidate, shutdown), 0 for the others.", "state")
	descRaftTerm      = desc("raft_term", "This node's current Raft term.")
	descRaftApplied   = desc("raft_applied_index", "Index of the last Raft log entry applied to this node's ledger.")
	descRaftLeader    = desc("raft_leader_known", "1 when this node knows a Raft leader, else 0.")
	descRaftVoter     = desc("raft_voter", "1 when this node is a Raft voter, else 0.")
	descRaftRefused   = desc("raft_refused_streams_total", "Raft streams this node refused from peers that are not members.")
	descPeers         = desc("libp2p_peers", "Connected libp2p peers, by how this node reaches them (direct, hole-punched, relayed).", "connection")
	descConns         = desc("libp2p_connections", "Open libp2p connections, by direction (inbound, outbound).", "direction")
)

// collector reads a Source at scrape time. One scrape calls Status and
// Generations once each, so the series of one scrape agree.
type collector struct {
	s *Server
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descInfo, descLock, descUnlockHave, descUnlockNeed, descUnlockGen,
		descGenCurrent, descGenOpen, descGenOpenDL, descGenStates, descGenMembers,
		descGenThreshold, descGenEscrowed, descGenHeld, descMembers, descMemberConn,
		descMemberEscrow, descMemberHeld, descMemberThresh, descMemberCovered,
		descMemberBehind, descMemberVoter, descRaftState, descRaftTerm,
		descRaftApplied, descRaftLeader, descRaftVoter, descRaftRefused,
		descPeers, descConns,
	} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	src := c.s.source()
	if src == nil {
		return
	}
	st := src.Status()
	gens := src.Generations()

	gauge(ch, descInfo, 1, st.PeerID, st.ClusterID)
	for _, s := range lockStates {
		gauge(ch, descLock, b2f(st.Lock == s), string(s))
	}
	gauge(ch, descUnlockHave, float64(st.Unlock.Have))
	gauge(ch, descUnlockNeed, float64(st.Unlock.Need))
	gauge(ch, descUnlockGen, float64(st.Unlock.Generation))

	var cur, open, deadline float64
	if st.Generation.Current != nil {
		cur = float64(*st.Generation.Current)
	}
	if o := st.Generation.Open; o != nil {
		open = float64(o.Number)
		deadline = float64(o.Deadline.UnixNano()) / float64(time.Second)
	}
	gauge(ch, descGenCurrent, cur)
	gauge(ch, descGenOpen, open)
	gauge(ch, descGenOpenDL, deadline)

	byState := map[string]int{"open": 0, "committed": 0, "aborted": 0, "retired": 0}
	for _, g := range gens {
		byState[g.State]++
		if !live(g) {
			continue
		}
		num := strconv.FormatUint(g.Number, 10)
		gauge(ch, descGenMembers, float64(len(g.Members)), num)
		gauge(ch, descGenThreshold, float64(g.Threshold), num)
		gauge(ch, descGenEscrowed, float64(g.Escrowed), num)
		for i, owner := range g.Members {
			if i < len(g.Held) {
				gauge(ch, descGenHeld, float64(g.Held[i]), num, owner)
			}
		}
	}
	for s, k := range byState {
		gauge(ch, descGenStates, float64(k), s)
	}

	byStatus := map[string]int{}
	for _, m := range st.Members {
		byStatus[m.Status]++
		gauge(ch, descMemberConn, b2f(m.Connection != p2p.ConnNone && m.Connection != ""), m.PeerID)
		var esc float64
		if m.EscrowGeneration != nil {
			esc = float64(*m.EscrowGeneration)
		}
		gauge(ch, descMemberEscrow, esc, m.PeerID)
		gauge(ch, descMemberHeld, float64(m.SharesHeld), m.PeerID)
		gauge(ch, descMemberThresh, float64(m.Threshold), m.PeerID)
		gauge(ch, descMemberCovered, b2f(m.Threshold > 0 && m.SharesHeld >= m.Threshold), m.PeerID)
		gauge(ch, descMemberBehind, float64(m.Behind), m.PeerID)
		gauge(ch, descMemberVoter, b2f(m.Voter), m.PeerID)
	}
	for s, k := range byStatus {
		gauge(ch, descMembers, float64(k), s)
	}

	for _, s := range raftStates {
		gauge(ch, descRaftState, b2f(st.Raft.State == s), s)
	}
	gauge(ch, descRaftTerm, float64(st.Raft.Term))
	gauge(ch, descRaftApplied, float64(st.Raft.AppliedIndex))
	gauge(ch, descRaftLeader, b2f(st.Raft.Leader != ""))
	gauge(ch, descRaftVoter, b2f(st.Raft.Voter))
	ch <- prometheus.MustNewConstMetric(descRaftRefused, prometheus.CounterValue, float64(st.Raft.RefusedStreams))

	if h, ok := src.(hostSource); ok {
		peers, in, out := connCounts(h.Host())
		for _, t := range connTypes {
			gauge(ch, descPeers, float64(peers[t]), t)
		}
		gauge(ch, descConns, float64(in), "inbound")
		gauge(ch, descConns, float64(out), "outbound")
	}
}

// connCounts counts h's connected peers by how h reaches them (p2p.ConnType)
// and its open connections by direction.
func connCounts(h host.Host) (peers map[string]int, in, out int) {
	peers = map[string]int{}
	for _, p := range h.Network().Peers() {
		peers[p2p.ConnType(h, p)]++
	}
	for _, c := range h.Network().Conns() {
		switch c.Stat().Direction {
		case network.DirInbound:
			in++
		case network.DirOutbound:
			out++
		}
	}
	return peers, in, out
}

// live says whether g is open or committed: the generations whose matrix
// means something (a retired one keeps an empty matrix, its envelopes
// deleted).
func live(g node.GenerationInfo) bool {
	return (g.State == "open" || g.State == "committed") && len(g.Matrix) > 0
}
