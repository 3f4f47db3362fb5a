package consensus

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TransferLeadership hands leadership to the most up-to-date voter before
// this server stops, if it is the leader (a no-op otherwise): the cluster
// then has a leader at once instead of after an election timeout, and a
// graceful restart of the leader costs no election. It waits at most
// timeout.
func (c *Consensus) TransferLeadership(timeout time.Duration) error {
	if !c.IsLeader() || len(c.Servers()) < 2 {
		return nil
	}
	return c.waitTransfer(c.raft.LeadershipTransfer(), timeout)
}

// TransferLeadershipTo hands leadership to voter p, if this server is the
// leader, and waits at most timeout.
func (c *Consensus) TransferLeadershipTo(p peer.ID, timeout time.Duration) error {
	if !c.IsLeader() {
		return ErrNotLeader
	}
	id := raft.ServerID(p.String())
	return c.waitTransfer(c.raft.LeadershipTransferToServer(id, raft.ServerAddress(id)), timeout)
}

func (c *Consensus) waitTransfer(f raft.Future, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("consensus: leadership transfer: %w", err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("consensus: leadership transfer: no answer in %s", timeout)
	}
}
