package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/shares"
	"github.com/spf13/cobra"
)

func newAuditLogCmd(g *globals) *cobra.Command {
	var since time.Duration
	var owner string
	cmd := &cobra.Command{
		Use:   "audit-log [--since DURATION] [--owner ID] [--json]",
		Short: "Print this node's record of share releases (as a holder)",
		Long: `audit-log prints the holder's append-only record of what it did with the
envelopes it holds: every envelope stored, served (released to its owner),
refused (with the reason code) or deleted, with the owner, the generation, the
split and the peer that asked. It reads DATA/audit.jsonl and its rotated files
(audit.jsonl.1 ... .4, oldest first) and needs no running daemon. The record
holds no key material.

--json prints one JSON object per line, as stored.`,
		Example: `  p2pkey audit-log
  p2pkey audit-log --since 24h --owner 12D3KooW...
  p2pkey audit-log --json | jq 'select(.event == "refused")'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := node.DefaultConfig(g.dataDir).AuditLogPath()
			var from time.Time
			if since > 0 {
				from = time.Now().Add(-since)
			}
			w := cmd.OutOrStdout()
			n := 0
			err := shares.ReadAuditLog(path, func(e shares.Event) error {
				if e.Time.Before(from) || (owner != "" && !matchID(e.Owner.String(), owner)) {
					return nil
				}
				n++
				if g.jsonOut {
					b, err := json.Marshal(e)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(w, string(b))
					return err
				}
				line := fmt.Sprintf("%s  %-8s %-6s generation %-4d owner %s", e.Time.UTC().Format(time.RFC3339), e.Kind, e.Op, e.Generation, e.Owner)
				if e.Reason != "" {
					line += "  reason " + e.Reason
				}
				if e.Remote != "" && e.Remote != e.Owner {
					line += "  from " + e.Remote.String()
				}
				_, err := fmt.Fprintln(w, line)
				return err
			})
			if err != nil {
				return fmt.Errorf("read the audit log %s: %w", path, err)
			}
			if n == 0 && !g.jsonOut {
				fmt.Fprintf(cmd.ErrOrStderr(), "p2pkey: no share releases recorded in %s\n", path)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&since, "since", 0, "only records from the last DURATION (for example 24h)")
	cmd.Flags().StringVar(&owner, "owner", "", "only records about this owner (a peer ID, or an unambiguous short form)")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print one JSON object per record, as stored")
	return cmd
}

// matchID reports whether the peer ID full is what arg names: itself, a
// prefix of it, or the "12D3KooW…tail" short form the tables print.
func matchID(full, arg string) bool {
	if full == arg {
		return true
	}
	return len(matchPeers([]node.MemberInfo{{PeerID: full}}, arg)) == 1
}
