package main

import (
	"fmt"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// waitJSON is `wait --json`.
type waitJSON struct {
	Healthy bool `json:"healthy"`
	// WaitingFor is what the node still lacked when wait gave up; "" when
	// healthy.
	WaitingFor    string `json:"waiting_for,omitempty"`
	ActiveMembers int    `json:"active_members"`
	Leader        string `json:"leader"`
	Lock          string `json:"lock"`
}

func newWaitCmd(g *globals) *cobra.Command {
	var members int
	var timeout time.Duration
	var unlocked bool
	cmd := &cobra.Command{
		Use:   "wait [--members N] [--unlocked] [--timeout DURATION] [--json]",
		Short: "Wait until the node is a healthy member",
		Long: `wait polls the running daemon until it is an active, voting member that knows
the leader, and, with --members, until it sees exactly N active voting members;
with --unlocked, until its key is unlocked. It prints what it is still waiting
for every few seconds. If --timeout passes first it exits 1, or 3 when what it
still waits for is the key's unlock. Scripts use it to know when a node is
ready.

--json prints one object at the end: {healthy, waiting_for, active_members,
leader, lock}.`,
		Example: `  p2pkey wait --members 3 --timeout 2m
  p2pkey daemon --join-file invite.txt & p2pkey wait --unlocked`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTimeout(timeout); err != nil {
				return err
			}
			ctx, cancel := reqCtx(cmd, timeout)
			defer cancel()
			c := g.client()
			lastReport := time.Time{}
			var why string
			var last node.Status
			lockCause := false
			report := func(healthy bool) error {
				if !g.jsonOut {
					return nil
				}
				return printJSON(cmd.OutOrStdout(), waitJSON{Healthy: healthy, WaitingFor: why, ActiveMembers: countActive(last), Leader: last.Raft.Leader, Lock: string(last.Lock)})
			}
			for {
				st, err := c.Status(ctx)
				if err == nil {
					last = st
					why, lockCause = notHealthy(st, members, unlocked)
					if why == "" {
						if err := report(true); err != nil {
							return err
						}
						fmt.Fprintf(cmd.ErrOrStderr(), "healthy: %s, leader %s, lock %s\n", plural(countActive(st), "member"), short(st.Raft.Leader), st.Lock)
						return nil
					}
				} else if ctx.Err() == nil {
					why = explain(c, err, "read the status", timeout, false).Error()
				}
				if time.Since(lastReport) > 5*time.Second {
					fmt.Fprintf(cmd.ErrOrStderr(), "waiting: %s\n", why)
					lastReport = time.Now()
				}
				select {
				case <-ctx.Done():
					if err := report(false); err != nil {
						return err
					}
					err := fmt.Errorf("not healthy after %v: %s", timeout, why)
					if lockCause {
						return &statusError{code: exitLocked, err: err}
					}
					return err
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().IntVar(&members, "members", 0, "wait for exactly this many active voting members (0: any)")
	cmd.Flags().BoolVar(&unlocked, "unlocked", false, "also wait until this node's key is unlocked")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print the result as a JSON object")
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

// notHealthy says what the node still lacks, or "" when it is healthy, and
// whether what it lacks is the unlock of its key.
func notHealthy(st node.Status, members int, unlocked bool) (string, bool) {
	self := false
	for _, m := range st.Members {
		if m.PeerID == st.PeerID && m.Status == "active" && m.Voter {
			self = true
		}
	}
	locked := unlocked && st.Lock != node.LockUnlocked
	switch {
	case st.Raft.Leader == "":
		why := noLeaderShort(st)
		if locked {
			why += "; the key is " + string(st.Lock) + ": " + lockReason(st)
		}
		return why, locked
	case !self:
		return "this node is not yet an active voting member", false
	case members > 0 && countActive(st) != members:
		return fmt.Sprintf("%d of %d members active and voting", countActive(st), members), false
	case locked:
		return "the key is " + string(st.Lock) + ": " + lockReason(st), true
	}
	return "", false
}
