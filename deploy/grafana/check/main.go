// Command check loads Grafana dashboard JSON files the way Grafana's own schema
// describes them: strict decoding into the types the Grafana Foundation SDK
// generates from Grafana's dashboard kind, then the schema's validation rules.
// An unknown field, a wrong type or a missing required field fails the check,
// which a plain JSON parse would let through.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// real turns the SDK's empty error list, which it returns as a non-nil error
// interface on success, into nil.
func real(err error) error {
	if list, ok := err.(cog.BuildErrors); ok && len(list) == 0 {
		return nil
	}
	return err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var board dashboard.Dashboard
	if err := real(board.UnmarshalJSONStrict(raw)); err != nil {
		return fmt.Errorf("does not decode as a dashboard: %w", err)
	}
	if err := real(board.Validate()); err != nil {
		return fmt.Errorf("fails the dashboard schema: %w", err)
	}
	if board.Uid == nil || *board.Uid == "" {
		return fmt.Errorf("has no uid, so provisioning would give it a new one on every load")
	}
	// The SDK drops a panel it decoded without error from the dashboard (it
	// takes its empty error list for a failure), so each panel is decoded and
	// validated here on its own.
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	for i, rawPanel := range doc.Panels {
		var panel dashboard.Panel
		if err := real(panel.UnmarshalJSONStrict(rawPanel)); err != nil {
			return fmt.Errorf("panels[%d]: %w", i, err)
		}
		if err := real(panel.Validate()); err != nil {
			return fmt.Errorf("panels[%d] (%q) fails the panel schema: %w", i, deref(panel.Title), err)
		}
		if len(panel.Targets) == 0 {
			return fmt.Errorf("panels[%d] (%q) has no query", i, deref(panel.Title))
		}
		if panel.Datasource == nil {
			return fmt.Errorf("panels[%d] (%q) has queries but no data source", i, deref(panel.Title))
		}
	}
	fmt.Printf("%s: dashboard %q (uid %s, schemaVersion %d): %d panels, %d variables, %d annotations: ok\n",
		path, *board.Title, *board.Uid, board.SchemaVersion, len(doc.Panels), len(board.Templating.List), len(board.Annotations.List))
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: check DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
