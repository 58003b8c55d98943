// Runs SQL queries through clickhouse-go v2 over HTTP, the driver inside Grafana's
// ClickHouse data source, and prints every result as JSON, so a test can compare the
// rows with what clickhouse-connect reads from the same endpoint.
//
//	go run . -addr 127.0.0.1:8124 -database shadowline < queries.json > rows.json
//
// queries.json: {"name": "SQL", ...}; rows.json: {"name": [[col values...], ...], ...}
// or {"name": {"error": "..."}} for a query the driver could not run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8124", "host:port of the ClickHouse HTTP interface")
	database := flag.String("database", "shadowline", "default database")
	user := flag.String("user", "default", "user")
	password := flag.String("password", "", "password")
	gzip := flag.Bool("gzip", true, "send Accept-Encoding: gzip, as Grafana's data source does over HTTP")
	flag.Parse()

	var queries map[string]string
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fail("reading the queries: %v", err)
	}
	opts := &clickhouse.Options{
		Addr:        []string{*addr},
		Protocol:    clickhouse.HTTP,
		Auth:        clickhouse.Auth{Database: *database, Username: *user, Password: *password},
		Settings:    clickhouse.Settings{"max_execution_time": 60},
		DialTimeout: 10 * time.Second,
		ReadTimeout: 60 * time.Second,
	}
	if *gzip {
		// grafana-clickhouse-datasource's Connect: CompressionGZIP for the HTTP protocol
		opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionGZIP}
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		fail("open: %v", err)
	}
	defer conn.Close()
	ctx := context.Background()
	if err := conn.Ping(ctx); err != nil {
		fail("ping: %v", err)
	}
	names := make([]string, 0, len(queries))
	for name := range queries {
		names = append(names, name)
	}
	sort.Strings(names)
	out := map[string]any{}
	for _, name := range names {
		got, err := run(ctx, conn, queries[name])
		if err != nil {
			out[name] = map[string]string{"error": err.Error()}
			continue
		}
		out[name] = got
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("writing: %v", err)
	}
}

func run(ctx context.Context, conn clickhouse.Conn, sql string) ([][]any, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	result := [][]any{}
	for rows.Next() {
		values := make([]any, len(types))
		for i, t := range types {
			values[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rows.Scan(values...); err != nil {
			return nil, err
		}
		row := make([]any, len(values))
		for i, v := range values {
			row[i] = plain(reflect.ValueOf(v).Elem().Interface())
		}
		result = append(result, row)
	}
	return result, rows.Err()
}

// plain turns a scanned value into what JSON can hold: times as RFC 3339 in UTC,
// pointers followed, non-finite floats as strings.
func plain(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case *time.Time:
		if x == nil {
			return nil
		}
		return x.UTC().Format(time.RFC3339Nano)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Sprint(x)
		}
		return x
	case float32:
		return plain(float64(x))
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		return plain(rv.Elem().Interface())
	}
	return v
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "clickhouse-go-panels: "+format+"\n", args...)
	os.Exit(1)
}
