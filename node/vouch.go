package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/wire"
)

// Catching up with a leader the ledger does not know yet.
//
// A member whose log lags (it was down while another member joined, and
// that member leads now) refuses the new leader's AppendEntries: neither its
// Raft configuration nor its ledger names it (rules S1, S8), so it would
// never catch up while that leader leads, and would know no leader. When
// consensus refuses a peer (consensus.Config.OnRefused) that this node's
// ledger does not know as active or removed, the node asks active members
// of its own ledger, one after another, over the join protocol (a catch_up
// request: no invite, no command) for the current active members and the
// leader. A member answers only an active member of its own ledger, and
// only from a ledger confirmed current (read index), else it says "try
// another". The peers the first answer names are admitted for AppendEntries
// and InstallSnapshot (allowMember) for vouchTTL, which is what they need
// to bring this node's log up to date. The trust is a joiner's: the word of
// one active member, from its confirmed ledger; a removed peer is refused
// whatever the answer says.

const (
	// vouchTTL is how long a vouched peer stays admitted: far longer than
	// a catch-up takes, after which the ledger decides alone again.
	vouchTTL = 10 * time.Minute
	// vouchEvery bounds the rounds of questions: a stranger opening Raft
	// streams costs the members at most one question per vouchEvery.
	vouchEvery = 10 * time.Second
	// vouchAsk is how many members one round asks, until one answers.
	vouchAsk = 3
)

// vouchState holds the peers members vouched for, with their expiry.
type vouchState struct {
	mu      sync.Mutex
	until   map[peer.ID]time.Time
	last    time.Time
	running bool
	failing bool // the last round found no member to answer
	// ready is set once the node has its consensus and ledger: Raft
	// refuses streams from inside consensus.New, before either exists.
	ready atomic.Bool
}

func (v *vouchState) has(p peer.ID, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return now.Before(v.until[p])
}

// add admits ps until now+vouchTTL, and forgets what expired by now.
func (v *vouchState) add(ps []peer.ID, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.until == nil {
		v.until = map[peer.ID]time.Time{}
	}
	for id, t := range v.until {
		if !now.Before(t) {
			delete(v.until, id)
		}
	}
	for _, p := range ps {
		v.until[p] = now.Add(vouchTTL)
	}
}

// failedOnce reports whether this failed round is the first since the last
// one that succeeded (the node says so once, not every round).
func (v *vouchState) failedOnce() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	first := !v.failing
	v.failing = true
	return first
}

func (v *vouchState) succeeded() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failing = false
}

// begin reports whether a round of questions may start now.
func (v *vouchState) begin(now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.running || (!v.last.IsZero() && now.Sub(v.last) < vouchEvery) {
		return false
	}
	v.running, v.last = true, now
	return true
}

func (v *vouchState) end() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.running = false
}

// onRaftRefused is consensus' OnRefused. It decides at once whether the
// refusal is worth a round (not for an active or removed peer, not on a
// node that is no active member or knows it was removed), so that such
// refusals spend no round budget; the round itself runs on its own
// goroutine, since OnRefused must not block.
func (n *Node) onRaftRefused(p peer.ID) {
	if !n.catchUp.vouch.ready.Load() {
		// Still starting: the leaderless watch asks once it runs.
		return
	}
	if n.isRemoved() || n.memberStatus(n.host.ID()) != generations.StatusActive {
		// Only an active member is answered (a joiner has its join
		// response; a removed or lapsed node has nothing to follow).
		return
	}
	if p != "" {
		switch n.memberStatus(p) {
		case generations.StatusActive, generations.StatusRemoved:
			// Refused for another reason (a non-voter's vote request, a
			// removed peer): nothing to catch up with.
			return
		}
	}
	if n.catchUp.vouch.has(p, n.now()) || !n.catchUp.vouch.begin(n.now()) {
		return
	}
	// Not on n.wg: a refusal can come in while Close waits on it. The
	// round ends with n.ctx, and touches nothing Close frees but the host,
	// whose calls then fail.
	go func() {
		defer n.catchUp.vouch.end()
		if n.ctx.Err() != nil {
			return
		}
		n.askVouch(p)
	}()
}

// leaderlessWatch starts a round of questions (onRaftRefused) when this
// node, a server of a Raft configuration, has known no leader for three
// heartbeat timeouts, then every vouchEvery while it still knows none. A
// leader its lagging ledger does not know may never be refused by it at
// all: it dials the addresses the ledger has for this node, which a restart
// on another port left stale. The answer names the leader with its
// addresses, and this node dials it. The timer is armed only while there is
// no leader: a healthy node pays nothing.
func (n *Node) leaderlessWatch() {
	defer n.wg.Done()
	hb := n.cfg.HeartbeatTimeout
	if hb == 0 {
		hb = consensus.LANTiming().HeartbeatTimeout
	}
	after := 3 * hb
	var since time.Time
	for {
		changed := n.cons.LeaderChanged()
		var fire <-chan time.Time
		var t *time.Timer
		if n.cons.Leader() == "" && len(n.cons.Servers()) > 0 {
			now := n.now()
			if since.IsZero() {
				since = now
			}
			wait := after - now.Sub(since)
			if wait <= 0 {
				n.onRaftRefused("")
				wait = vouchEvery
				since = now.Add(vouchEvery - after)
			}
			t = time.NewTimer(wait)
			fire = t.C
		} else {
			since = time.Time{}
		}
		select {
		case <-n.ctx.Done():
			if t != nil {
				t.Stop()
			}
			return
		case <-changed:
		case <-fire:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// askVouch asks up to vouchAsk active members for the current members and
// admits the peers the first answer names (see vouchState). refused is the
// peer whose refusal started the round, for the log.
func (n *Node) askVouch(refused peer.ID) bool {
	var asks []peer.ID
	n.view(func(l *generations.Ledger) {
		for _, m := range l.Members() {
			if m.Status == generations.StatusActive && m.ID != n.host.ID() && m.ID != refused {
				asks = append(asks, m.ID)
			}
		}
	})
	rand.Shuffle(len(asks), func(i, j int) { asks[i], asks[j] = asks[j], asks[i] })
	cluster := n.ClusterID()
	for _, m := range asks[:min(len(asks), vouchAsk)] {
		named, leader, err := n.catchUpMembers(m, cluster)
		if err != nil {
			log.Debugw("catching up: a member did not vouch", "asked", m, "err", err)
			continue
		}
		n.catchUp.vouch.add(named, n.now())
		n.catchUp.vouch.succeeded()
		if leader != "" && leader != n.host.ID() && !n.connected(leader) {
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			if err := n.host.Connect(ctx, peer.AddrInfo{ID: leader}); err != nil {
				log.Debugw("catching up: dial the leader a member named", "leader", leader, "err", err)
			}
			cancel()
		}
		log.Infow("catching up: a member named the current members; admitting them to Raft until this node's ledger has caught up",
			"asked", m, "members", len(named), "leader", leader, "refused", refused)
		return true
	}
	if n.catchUp.vouch.failedOnce() {
		log.Infow("catching up: no member could name the current members; asking again while this node knows no leader", "asked", min(len(asks), vouchAsk), "refused", refused)
	} else {
		log.Debugw("catching up: no member could name the current members", "asked", min(len(asks), vouchAsk), "refused", refused)
	}
	return false
}

// catchUpMembers asks member m for the current active members and leader.
func (n *Node) catchUpMembers(m peer.ID, cluster string) (named []peer.ID, leader peer.ID, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	req := &pb.JoinRequest{Version: joinVersion, ClusterId: cluster, CatchUp: true}
	resp, err := wire.Call[pb.JoinResponse](network.WithAllowLimitedConn(ctx, "p2pkey-catch-up"), n.host, m, joinProto, req)
	if err != nil {
		return nil, "", err
	}
	if err := checkJoinResponse(resp); err != nil {
		return nil, "", err
	}
	if code := resp.GetErrorCode(); code != "" {
		return nil, "", fmt.Errorf("%s: %s", code, resp.GetErrorMessage())
	}
	if resp.GetClusterId() != cluster {
		return nil, "", fmt.Errorf("%w: answered for cluster %s", ErrWrongCluster, resp.GetClusterId())
	}
	for _, pm := range resp.GetMembers() {
		id, err := peer.IDFromBytes(pm.GetId())
		if err != nil {
			continue
		}
		named = append(named, id)
		n.addAddrs(id, pm.GetAddrs())
	}
	if id, err := peer.IDFromBytes(resp.GetLeader()); err == nil {
		leader = id
	}
	return named, leader, nil
}

// catchUp answers a catch_up request: the active members and the leader,
// from a ledger confirmed current, to an active member of this node's
// ledger only.
func (js *joinService) catchUp(ctx context.Context, remote peer.ID, req *pb.JoinRequest) *pb.JoinResponse {
	n := js.n
	resp := &pb.JoinResponse{Version: joinVersion, ClusterId: n.ClusterID()}
	switch {
	case resp.ClusterId == "":
		return js.refusal(codeUnavailable, ErrNotReady.Error())
	case req.GetClusterId() != resp.ClusterId:
		return js.refusal(codeWrongCluster, fmt.Sprintf("%v: asked about cluster %s, this node is in cluster %s", ErrWrongCluster, req.GetClusterId(), resp.ClusterId))
	case len(req.GetCommand()) > 0:
		return js.refusal(codeBadRequest, "a catch-up request carries no command")
	}
	// Who asks is checked on this member's own ledger before anything
	// costs a read index, and again after it: a stranger or a removed
	// member makes no member talk to the leader.
	if st := n.memberStatus(remote); st != generations.StatusActive {
		log.Infow("catch-up refused: not an active member", "peer", remote, "status", st)
		return js.refusal(codeBadRequest, "only an active member may ask for the current members")
	}
	fctx, cancel := context.WithTimeout(ctx, freshWait)
	err := n.cons.Fresh(fctx)
	cancel()
	if err != nil {
		log.Debugw("catch-up: ledger not confirmed", "peer", remote, "err", err)
		return js.refusal(codeUnavailable, "this member cannot confirm its ledger is current; try another")
	}
	if st := n.memberStatus(remote); st != generations.StatusActive {
		// A removed member whose own ledger lags asks too, every round
		// until it learns it was removed: not worth a warning each time.
		log.Infow("catch-up refused: not an active member", "peer", remote, "status", st)
		return js.refusal(codeBadRequest, "only an active member may ask for the current members")
	}
	n.view(func(l *generations.Ledger) {
		for _, m := range l.Members() {
			if m.Status == generations.StatusActive {
				resp.Members = append(resp.Members, &pb.Peer{Id: []byte(m.ID), Addrs: m.Addrs})
			}
		}
	})
	if l := n.cons.Leader(); l != "" {
		resp.Leader = []byte(l)
	}
	return resp
}
