package consensus

import (
	"fmt"
	"time"
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
	f := c.raft.LeadershipTransfer()
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
