package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit [--json]",
		Short: "Check now that every holder still has this node's envelopes",
		Long: `audit fetches this node's envelopes from every holder of every committed
generation it is escrowed in, and checks that each is the envelope recorded in
the ledger and that it opens. The daemon also does this every hour
(AuditInterval).

Each holder is reported as ok, missing (it lost the envelope), corrupt (it has
a different or unreadable one), unreachable (no answer, which is not evidence of
loss) or refused. If a holder of the current generation lost an envelope, the
node repairs its escrow at once by opening a new generation, in which every
owner re-shares; no operator action is needed. audit exits 1 if anything was
lost.`,
		Example: `  p2pkey audit
  p2pkey audit --json | jq '.generations[].holders[] | select(.result != "ok")'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, 2*time.Minute)
			defer cancel()
			c := g.client()
			rep, err := c.Audit(ctx)
			if err != nil {
				return explain(c, err, "run the audit", 2*time.Minute, false)
			}
			if g.jsonOut {
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				for _, gen := range rep.Generations {
					tag := ""
					if gen.Current {
						tag = " (current)"
					}
					fmt.Fprintf(w, "generation %d%s\n", gen.Number, tag)
					for _, h := range gen.Holders {
						line := fmt.Sprintf("  %-54s %s", h.PeerID, h.Result)
						if h.Error != "" && h.Result != "ok" {
							line += ": " + h.Error
						}
						fmt.Fprintln(w, line)
					}
				}
				if rep.Repair != "" {
					fmt.Fprintf(w, "repair: %s\n", rep.Repair)
				}
			}
			if rep.Lost > 0 {
				return fmt.Errorf("%d holders of the current generation lost this node's envelope", rep.Lost)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}
