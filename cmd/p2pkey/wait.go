package main

import (
	"fmt"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

func newWaitCmd(g *globals) *cobra.Command {
	var members int
	var timeout time.Duration
	var unlocked bool
	cmd := &cobra.Command{
		Use:   "wait [--members N] [--unlocked] [--timeout DURATION]",
		Short: "Wait until the node is a healthy member",
		Long: `wait polls the running daemon until it is an active, voting member that knows
the leader, and, with --members, until it sees exactly N active voting members;
with --unlocked, until its key is unlocked. It prints what it is still waiting
for every few seconds, and exits 1 if --timeout passes first. Scripts use it to
know when a node is ready.`,
		Example: `  p2pkey wait --members 3 --timeout 2m
  p2pkey daemon --join "$INVITE" & p2pkey wait --unlocked`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, timeout)
			defer cancel()
			c := g.client()
			lastReport := time.Time{}
			var why string
			for {
				st, err := c.Status(ctx)
				if err == nil {
					why = notHealthy(st, members, unlocked)
					if why == "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "healthy: %d members, leader %s, lock %s\n", countActive(st), short(st.Raft.Leader), st.Lock)
						return nil
					}
				} else {
					why = err.Error()
				}
				if time.Since(lastReport) > 5*time.Second {
					fmt.Fprintf(cmd.ErrOrStderr(), "waiting: %s\n", why)
					lastReport = time.Now()
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("not healthy after %v: %s", timeout, why)
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().IntVar(&members, "members", 0, "wait for exactly this many active voting members (0: any)")
	cmd.Flags().BoolVar(&unlocked, "unlocked", false, "also wait until this node's key is unlocked")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}

func countActive(st node.Status) int {
	n := 0
	for _, m := range st.Members {
		if m.Status == "active" && m.Voter {
			n++
		}
	}
	return n
}

// notHealthy says what the node still lacks, or "" when it is healthy.
func notHealthy(st node.Status, members int, unlocked bool) string {
	self := false
	for _, m := range st.Members {
		if m.PeerID == st.PeerID && m.Status == "active" && m.Voter {
			self = true
		}
	}
	switch {
	case st.Raft.Leader == "":
		return "no Raft leader known"
	case !self:
		return "this node is not yet an active voting member"
	case members > 0 && countActive(st) != members:
		return fmt.Sprintf("%d of %d members active and voting", countActive(st), members)
	case unlocked && st.Lock != node.LockUnlocked:
		return "key is " + st.Lock
	}
	return ""
}
