// shadowline-proxy: the mirroring proxy's compiled data path (proxy.engine = "go").
//
// It does what shadowline/proxy.py does, request for request: forward to the
// experiment's upstream and stream production's answer back unchanged, then mirror
// the request, the answer, the status and the upstream's latency to Kafka as the
// JSON contract (docs/contracts.md), sampled and redacted as the Python tap does. The
// mirror never delays or fails an answer: a bounded queue between the handlers and
// one sender goroutine, and a Kafka client whose buffer refuses instead of blocking.
//
// `shadowline proxy` validates the config and starts this program with the resolved
// settings as JSON on a pipe (file descriptor given by --config-fd), so there is one
// config parser, and secrets never appear in argv.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

type settings struct {
	Listen          string   `json:"listen"`
	Upstream        string   `json:"upstream"`
	Routes          []string `json:"routes"`
	RequestIDHeader string   `json:"request_id_header"`
	UnitIDHeader    string   `json:"unit_id_header"`
	InputsPath      string   `json:"inputs_path"`
	OutputsPath     string   `json:"outputs_path"`
	TimeoutS        float64  `json:"timeout_s"`
	PreserveHost    bool     `json:"preserve_host"`
	MaxConnections  int      `json:"max_connections"`
	GoProcs         int      `json:"go_procs"`
	MaxBodyBytes    int64    `json:"max_body_bytes"`
	MaxMirrorBytes  int      `json:"max_mirror_bytes"`
	Experiment      string   `json:"experiment"`
	ProductionModel string   `json:"production_model"`
	Sampling        float64  `json:"sampling"`
	RedactDrop      []string `json:"redact_drop"`
	RedactHash      []string `json:"redact_hash"`
	RedactSalt      string   `json:"redact_salt"`
	QueueSize       int      `json:"queue_size"`
	LingerMs        float64  `json:"linger_ms"`
	CloseTimeoutS   float64  `json:"close_timeout_s"`
	Kafka           struct {
		Bootstrap        []string `json:"bootstrap"`
		RequestsTopic    string   `json:"requests_topic"`
		PredictionsTopic string   `json:"predictions_topic"`
		Protocol         string   `json:"security_protocol"`
		SASLMechanism    string   `json:"sasl_mechanism"`
		SASLUsername     string   `json:"sasl_username"`
		SASLPassword     string   `json:"sasl_password"`
		CA               string   `json:"ssl_ca_location"`
		Certificate      string   `json:"ssl_certificate_location"`
		Key              string   `json:"ssl_key_location"`
		MaxMessageBytes  int32    `json:"max_message_bytes"`
	} `json:"kafka"`
}

// The counters, named as the Python proxy's and tap's (so dashboards and alerts read
// either engine alike).
type counters struct {
	forwarded, mirrored, notMirroredRoute, notMirroredSize, notMirroredTap   atomic.Int64
	upstreamErrors, upstreamTimeouts, upstreamUnreachable                    atomic.Int64
	recorded, sampledOut, droppedQueueFull, rejected, enqueued               atomic.Int64
	droppedClientFull, delivered, failed, undeliveredAtClose, droppedUnknown atomic.Int64
}

func (c *counters) metrics() []byte {
	rows := []struct {
		prefix, what, name string
		v                  *atomic.Int64
	}{
		{"shadowline_proxy", "proxy", "forwarded", &c.forwarded},
		{"shadowline_proxy", "proxy", "mirrored", &c.mirrored},
		{"shadowline_proxy", "proxy", "not_mirrored_route", &c.notMirroredRoute},
		{"shadowline_proxy", "proxy", "not_mirrored_size", &c.notMirroredSize},
		{"shadowline_proxy", "proxy", "not_mirrored_tap", &c.notMirroredTap},
		{"shadowline_proxy", "proxy", "upstream_errors", &c.upstreamErrors},
		{"shadowline_proxy", "proxy", "upstream_timeouts", &c.upstreamTimeouts},
		{"shadowline_proxy", "proxy", "upstream_unreachable", &c.upstreamUnreachable},
		{"shadowline_proxy_tap", "tap", "recorded", &c.recorded},
		{"shadowline_proxy_tap", "tap", "sampled_out", &c.sampledOut},
		{"shadowline_proxy_tap", "tap", "dropped_queue_full", &c.droppedQueueFull},
		{"shadowline_proxy_tap", "tap", "dropped_unknown_experiment", &c.droppedUnknown},
		{"shadowline_proxy_tap", "tap", "rejected", &c.rejected},
		{"shadowline_proxy_tap", "tap", "enqueued", &c.enqueued},
		{"shadowline_proxy_tap", "tap", "dropped_client_full", &c.droppedClientFull},
		{"shadowline_proxy_tap", "tap", "delivered", &c.delivered},
		{"shadowline_proxy_tap", "tap", "failed", &c.failed},
		{"shadowline_proxy_tap", "tap", "undelivered_at_close", &c.undeliveredAtClose},
	}
	var out []byte
	for _, r := range rows {
		m := r.prefix + "_" + r.name + "_total"
		out = fmt.Appendf(out, "# HELP %s %s: %s\n# TYPE %s counter\n%s %d.0\n",
			m, r.what, strings.ReplaceAll(r.name, "_", " "), m, m, r.v.Load())
	}
	return out
}

// RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Upgrade": true, "Proxy-Connection": true,
}

// A request target or header line longer than this is refused (414, 431), as aiohttp's parser refuses it
// in the Python engine: no upstream should have to take it.
const maxFieldBytes = 8190

// One answered request, as the handler hands it to the sender.
type record struct {
	requestID, unitID string
	body, answer      []byte // answer nil: no answer (timeout, unreachable)
	status            int
	latencyMs         float64
	err               string
	eventTime         int64
}

type proxy struct {
	s        settings
	c        counters
	client   *http.Client
	upstream string
	routes   []string
	queue    chan *record
	kafka    *kgo.Client
}

// Read buffers for answers, reused: a fresh 32 KiB per request was a tenth of the CPU
// (allocation and clearing).
var buffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (p *proxy) mirroredPath(path string) bool {
	for _, r := range p.routes {
		if r == "" || path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && (r.URL.Path == "/-/shadowline/metrics" ||
		r.URL.Path == "/-/shadowline/healthz") {
		p.own(w, r)
		return
	}
	if len(r.RequestURI) > maxFieldBytes {
		http.Error(w, fmt.Sprintf("request target over %d bytes", maxFieldBytes),
			http.StatusRequestURITooLong)
		return
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if len(k)+2+len(v) > maxFieldBytes {
				http.Error(w, fmt.Sprintf("header field %.80s over %d bytes", k, maxFieldBytes),
					http.StatusRequestHeaderFieldsTooLarge)
				return
			}
		}
	}
	p.c.forwarded.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("request body over %d bytes", p.s.MaxBodyBytes),
				http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "request body not read: "+err.Error(), http.StatusBadRequest)
		return
	}
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") { // absolute-form (a client speaking to a proxy)
		uri = r.URL.RequestURI()
	}
	// Not cancelled when the client goes (or half-closes): production still answers,
	// and that answer is what gets mirrored, as with the Python engine.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()),
		time.Duration(p.s.TimeoutS*float64(time.Second)))
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, r.Method, p.upstream+uri, nil)
	if err != nil {
		http.Error(w, "request not forwardable: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > 0 {
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		out.GetBody = nil
	}
	dropped := connectionListed(r.Header)
	for k, vs := range r.Header {
		if hopByHop[k] || dropped[k] {
			continue
		}
		out.Header[k] = vs
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // none, as the client sent none
	}
	requestID := r.Header.Get(p.s.RequestIDHeader)
	if requestID == "" {
		requestID = newID()
		out.Header.Set(p.s.RequestIDHeader, requestID)
	}
	if p.s.PreserveHost {
		out.Host = r.Host
	}
	mirror := p.mirroredPath(r.URL.Path)
	if !mirror {
		p.c.notMirroredRoute.Add(1)
	}
	rec := &record{requestID: requestID, body: body, eventTime: time.Now().UnixMilli()}
	if p.s.UnitIDHeader != "" {
		rec.unitID = r.Header.Get(p.s.UnitIDHeader)
	}
	started := time.Now()
	resp, err := p.client.Do(out)
	if err != nil {
		rec.latencyMs = msSince(started)
		if errors.Is(err, context.DeadlineExceeded) {
			p.c.upstreamTimeouts.Add(1)
			rec.err = fmt.Sprintf("TimeoutError: upstream took longer than %g s", p.s.TimeoutS)
			p.record(mirror, rec)
			http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
			return
		}
		p.c.upstreamUnreachable.Add(1)
		rec.err = "UpstreamError: " + err.Error()
		p.record(mirror, rec)
		http.Error(w, "upstream unreachable", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	h := w.Header()
	droppedBack := connectionListed(resp.Header)
	for k, vs := range resp.Header {
		if hopByHop[k] || droppedBack[k] || k == "Content-Length" {
			continue
		}
		h[k] = vs
	}
	if _, ok := resp.Header["Content-Type"]; !ok {
		h["Content-Type"] = nil // no sniffed type the upstream did not send
	}
	if _, ok := resp.Header["Date"]; !ok {
		h["Date"] = nil
	}
	if resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	chunked := resp.ContentLength < 0
	var kept []byte
	overflow := false
	bufp := buffers.Get().(*[]byte)
	defer buffers.Put(bufp)
	buf := *bufp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break // the client went away; what production answered is still recorded
			}
			if chunked && flusher != nil {
				flusher.Flush()
			}
			if mirror && !overflow {
				if len(kept)+n > p.s.MaxMirrorBytes {
					overflow, kept = true, nil
				} else {
					kept = append(kept, buf[:n]...)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Headers are out: the client sees a cut answer; production's error is recorded.
			rec.latencyMs = msSince(started)
			if errors.Is(rerr, context.DeadlineExceeded) {
				p.c.upstreamTimeouts.Add(1)
				rec.err = fmt.Sprintf("TimeoutError: upstream took longer than %g s",
					p.s.TimeoutS)
			} else {
				p.c.upstreamUnreachable.Add(1)
				rec.err = "UpstreamError: " + rerr.Error()
			}
			p.record(mirror, rec)
			panic(http.ErrAbortHandler)
		}
	}
	rec.latencyMs = msSince(started)
	if flusher != nil {
		flusher.Flush() // the client has production's answer before any mirror bookkeeping
	}
	rec.status = resp.StatusCode
	if resp.StatusCode >= 500 {
		p.c.upstreamErrors.Add(1)
		rec.err = fmt.Sprintf("HTTP %d from upstream", resp.StatusCode)
	}
	if overflow && mirror {
		p.c.notMirroredSize.Add(1)
		mirror = false
	}
	if kept == nil {
		kept = []byte{}
	}
	rec.answer = kept
	p.record(mirror, rec)
}

// connectionListed: the fields a Connection header names are hop-by-hop too.
func connectionListed(h http.Header) map[string]bool {
	var out map[string]bool
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if out == nil {
					out = map[string]bool{}
				}
				out[http.CanonicalHeaderKey(f)] = true
			}
		}
	}
	return out
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Nanoseconds()) / 1e6 }

func (p *proxy) own(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "metrics") {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write(p.c.metrics())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	doc, _ := json.Marshal(map[string]string{"status": "ok", "upstream": p.upstream})
	_, _ = w.Write(doc)
}

// record hands an answered request to the sender, in the handler, without waiting:
// the size check, the sampling check and a channel send that refuses when full.
func (p *proxy) record(mirror bool, rec *record) {
	if !mirror {
		return
	}
	if len(rec.body) > p.s.MaxMirrorBytes {
		p.c.notMirroredSize.Add(1)
		return
	}
	if !sampled(rec.requestID, p.s.Sampling) {
		p.c.sampledOut.Add(1)
		p.c.notMirroredTap.Add(1)
		return
	}
	select {
	case p.queue <- rec:
		p.c.recorded.Add(1)
		p.c.mirrored.Add(1)
	default:
		p.c.droppedQueueFull.Add(1)
		p.c.notMirroredTap.Add(1)
	}
}

// sampled is the tap's deterministic sampling: CRC-32 of the request ID under the
// rate's share of 2^32, so both engines, replays and restarts pick the same requests.
func sampled(id string, rate float64) bool {
	if rate >= 1 {
		return true
	}
	if rate <= 0 {
		return false
	}
	return float64(crc32.ChecksumIEEE([]byte(id))) < rate*4294967296.0
}

// messages builds the request and production's prediction (JSON contract) from an
// answered request, as Proxy._record and the tap do; ok false: not mirrored (a body
// the candidates cannot read).
func (p *proxy) messages(rec *record) (req, pred []byte, ok bool) {
	if !utf8.Valid(rec.body) {
		return nil, nil, false
	}
	var inputs any
	if len(rec.body) > 0 {
		doc, err := parseJSON(rec.body)
		if err != nil {
			return nil, nil, false
		}
		if inputs, err = atPath(doc, p.s.InputsPath); err != nil {
			return nil, nil, false
		}
	} else if p.s.InputsPath != "" {
		return nil, nil, false // None has no path
	}
	obj, isObj := inputs.(*object)
	if !isObj {
		obj = &object{keys: []string{"body"}, vals: map[string]any{"body": inputs}}
	}
	if len(p.s.RedactDrop)+len(p.s.RedactHash) > 0 {
		obj = redact(obj, p.s.RedactDrop, p.s.RedactHash, p.s.RedactSalt)
	}
	errText := rec.err
	var output any
	haveOutput := false
	if rec.answer != nil && errText == "" {
		var doc any
		var perr error
		if len(rec.answer) > 0 && utf8.Valid(rec.answer) {
			doc, perr = parseJSON(rec.answer)
		} else if len(rec.answer) > 0 {
			perr = errors.New("not UTF-8")
		}
		if perr != nil {
			errText = fmt.Sprintf("ResponseError: HTTP %d body not JSON", rec.status)
		} else if output, perr = atPath(doc, p.s.OutputsPath); perr != nil {
			errText = fmt.Sprintf("ResponseError: HTTP %d body has no %s", rec.status,
				pyStr(p.s.OutputsPath))
		} else {
			haveOutput = output != nil
		}
	}
	if errText == "" && rec.status >= 400 {
		errText = fmt.Sprintf("HTTP %d from upstream", rec.status)
	}
	if !haveOutput && errText == "" {
		errText = "ResponseError: production answered null" // a prediction needs one of the two
	}
	req = append(req, `{"request_id":`...)
	req = appendString(req, rec.requestID)
	req = append(req, `,"experiment":`...)
	req = appendString(req, p.s.Experiment)
	req = fmt.Appendf(req, `,"event_time":%d,"inputs":`, rec.eventTime)
	req = appendJSON(req, obj)
	req = appendUnit(req, rec.unitID)
	req = append(req, `,"arm":null,"arm_weight":null}`...)

	pred = append(pred, `{"request_id":`...)
	pred = appendString(pred, rec.requestID)
	pred = append(pred, `,"experiment":`...)
	pred = appendString(pred, p.s.Experiment)
	pred = append(pred, `,"role":"production","model":`...)
	pred = appendString(pred, p.s.ProductionModel)
	pred = append(pred, `,"output":`...)
	if haveOutput && errText == "" {
		pred = appendJSON(pred, output)
	} else {
		pred = append(pred, "null"...)
	}
	lat := rec.latencyMs
	if lat < 0 {
		lat = 0
	}
	pred = fmt.Appendf(pred, `,"latency_ms":%s,"error":`, pyFloat(lat))
	if errText == "" {
		pred = append(pred, "null"...)
	} else {
		pred = appendString(pred, errText)
	}
	pred = fmt.Appendf(pred, `,"event_time":%d,"timing":"request"`, rec.eventTime)
	pred = appendUnit(pred, rec.unitID)
	pred = append(pred, '}')
	return req, pred, true
}

func appendUnit(buf []byte, unit string) []byte {
	buf = append(buf, `,"unit_id":`...)
	if unit == "" {
		return append(buf, "null"...)
	}
	return appendString(buf, unit)
}

var jsonHeader = []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/json")}}

// send runs in its own goroutine: build, then hand to the Kafka client without
// blocking (a full client buffer is counted, as the tap counts BufferError).
func (p *proxy) send() {
	for rec := range p.queue {
		req, pred, ok := p.messages(rec)
		if !ok { // a body the candidates cannot read: counted as the Python proxy counts it
			p.c.recorded.Add(-1)
			p.c.mirrored.Add(-1)
			p.c.notMirroredTap.Add(1)
			continue
		}
		key := []byte(rec.requestID)
		p.produce(p.s.Kafka.RequestsTopic, key, req)
		p.produce(p.s.Kafka.PredictionsTopic, key, pred)
	}
}

func (p *proxy) produce(topic string, key, value []byte) {
	if p.kafka == nil {
		p.c.droppedClientFull.Add(1)
		return
	}
	r := &kgo.Record{Topic: topic, Key: key, Value: value, Headers: jsonHeader}
	p.kafka.TryProduce(context.Background(), r, func(_ *kgo.Record, err error) {
		switch {
		case err == nil:
			p.c.delivered.Add(1)
		case errors.Is(err, kgo.ErrMaxBuffered):
			p.c.enqueued.Add(-1)
			p.c.droppedClientFull.Add(1)
		default:
			p.c.failed.Add(1)
		}
	})
	p.c.enqueued.Add(1)
}

// redact drops or hashes dotted paths, as shadowline.tap.redact: only the objects on
// a path are copied, and a path that is not there is left alone.
func redact(in *object, drop, hash []string, salt string) *object {
	out := copyObject(in)
	for _, path := range append(append([]string{}, drop...), hash...) {
		node := out
		parts := strings.Split(path, ".")
		for _, part := range parts[:len(parts)-1] {
			child, ok := node.vals[part].(*object)
			if !ok {
				break
			}
			c := copyObject(child)
			node.vals[part] = c
			node = c
		}
	}
	for _, path := range drop {
		apply(out, strings.Split(path, "."), nil)
	}
	key := []byte(salt)
	for _, path := range hash {
		apply(out, strings.Split(path, "."), key)
	}
	return out
}

func copyObject(o *object) *object {
	c := &object{keys: append([]string{}, o.keys...), vals: make(map[string]any, len(o.vals))}
	for k, v := range o.vals {
		c.vals[k] = v
	}
	return c
}

func apply(node *object, parts []string, salt []byte) {
	for _, part := range parts[:len(parts)-1] {
		child, ok := node.vals[part].(*object)
		if !ok {
			return
		}
		node = child
	}
	leaf := parts[len(parts)-1]
	v, ok := node.vals[leaf]
	if !ok {
		return
	}
	if salt == nil {
		delete(node.vals, leaf)
		keys := node.keys[:0:0]
		for _, k := range node.keys {
			if k != leaf {
				keys = append(keys, k)
			}
		}
		node.keys = keys
		return
	}
	h, err := hashValue(v, salt)
	if err != nil {
		delete(node.vals, leaf) // a value Python could not hash would not be mirrored either
		return
	}
	node.vals[leaf] = h
}

func kafkaClient(s settings) (*kgo.Client, error) {
	k := s.Kafka
	opts := []kgo.Opt{
		kgo.SeedBrokers(k.Bootstrap...),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // murmur2, as the Java client
		kgo.ProducerBatchCompression(kgo.Lz4Compression()),
		kgo.ProducerLinger(time.Duration(s.LingerMs * float64(time.Millisecond))),
		kgo.MaxBufferedRecords(max(2*s.QueueSize, 1000)),
		kgo.RecordDeliveryTimeout(120 * time.Second),
		kgo.ProducerBatchMaxBytes(k.MaxMessageBytes),
	}
	proto := strings.ToUpper(k.Protocol)
	if proto == "SSL" || proto == "SASL_SSL" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if k.CA != "" {
			pem, err := os.ReadFile(k.CA)
			if err != nil {
				return nil, fmt.Errorf("kafka.ssl_ca_location: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kafka.ssl_ca_location %s: no PEM certificate in it", k.CA)
			}
			cfg.RootCAs = pool
		}
		if k.Certificate != "" || k.Key != "" {
			pair, err := tls.LoadX509KeyPair(k.Certificate, k.Key)
			if err != nil {
				return nil, fmt.Errorf("kafka.ssl_certificate_location / ssl_key_location: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if proto == "SASL_PLAINTEXT" || proto == "SASL_SSL" {
		var mech sasl.Mechanism
		switch strings.ToUpper(k.SASLMechanism) {
		case "PLAIN", "":
			mech = plain.Auth{User: k.SASLUsername, Pass: k.SASLPassword}.AsMechanism()
		case "SCRAM-SHA-256":
			mech = scram.Auth{User: k.SASLUsername, Pass: k.SASLPassword}.AsSha256Mechanism()
		case "SCRAM-SHA-512":
			mech = scram.Auth{User: k.SASLUsername, Pass: k.SASLPassword}.AsSha512Mechanism()
		default:
			return nil, fmt.Errorf("kafka.sasl_mechanism %q: the go engine takes PLAIN, "+
				"SCRAM-SHA-256 or SCRAM-SHA-512", k.SASLMechanism)
		}
		opts = append(opts, kgo.SASL(mech))
	}
	return kgo.NewClient(opts...)
}

func main() {
	fd := flag.Int("config-fd", -1, "file descriptor to read the JSON settings from")
	hashMode := flag.Bool("hash-lines", false, "read 'salt\\tJSON' lines, print the tap's hash of each (tests)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("shadowline-proxy: ")
	if *hashMode {
		hashLines(os.Stdin, os.Stdout)
		return
	}
	if *fd < 0 {
		log.Fatal("start me with `shadowline proxy` (proxy.engine = \"go\"), which passes --config-fd")
	}
	raw, err := io.ReadAll(os.NewFile(uintptr(*fd), "settings"))
	if err != nil {
		log.Fatalf("settings not read: %v", err)
	}
	var s settings
	if err := json.Unmarshal(raw, &s); err != nil {
		log.Fatalf("settings not JSON: %v", err)
	}
	if path := os.Getenv("SHADOWLINE_PROXY_CPUPROFILE"); path != "" {
		// for operators and benchmarks: where this process spends its CPU, until it stops
		f, err := os.Create(path)
		if err != nil {
			log.Fatalf("SHADOWLINE_PROXY_CPUPROFILE=%s: %v", path, err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatalf("SHADOWLINE_PROXY_CPUPROFILE: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if s.GoProcs > 0 {
		runtime.GOMAXPROCS(s.GoProcs)
	}
	if err := serve(s); err != nil {
		log.Print(err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func serve(s settings) error {
	p := &proxy{s: s, upstream: strings.TrimRight(s.Upstream, "/"), queue: make(chan *record, s.QueueSize)}
	for _, r := range s.Routes {
		p.routes = append(p.routes, strings.TrimRight(r, "/"))
	}
	transport := &http.Transport{
		Proxy:               nil, // production's endpoint is called directly, never via HTTP_PROXY
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        s.MaxConnections,
		MaxIdleConnsPerHost: s.MaxConnections,
		MaxConnsPerHost:     s.MaxConnections,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true, // the client gets the upstream's bytes, encoded as they came
		ForceAttemptHTTP2:   false,
	}
	p.client = &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	client, err := kafkaClient(s)
	if err != nil {
		return err
	}
	p.kafka = client
	done := make(chan struct{})
	go func() { p.send(); close(done) }()

	server := &http.Server{
		Addr:              s.Listen,
		Handler:           http.MaxBytesHandler(p, s.MaxBodyBytes),
		ReadHeaderTimeout: 30 * time.Second,
		ReadTimeout:       30*time.Second + time.Duration(s.TimeoutS*float64(time.Second)),
		IdleTimeout:       75 * time.Second,
		MaxHeaderBytes:    64 * 8190,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return fmt.Errorf("proxy.port: cannot listen on %s: %w", s.Listen, err)
	}
	fmt.Printf("proxy on http://%s/ -> %s (experiment %s, engine go)\n", s.Listen, p.upstream, s.Experiment)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = server.Shutdown(ctx)
	cancel()
	close(p.queue)
	<-done
	fctx, fcancel := context.WithTimeout(context.Background(),
		time.Duration(s.CloseTimeoutS*float64(time.Second)))
	if err := client.Flush(fctx); err != nil {
		left := client.BufferedProduceRecords()
		p.c.undeliveredAtClose.Add(left)
		log.Printf("closed with %d messages not delivered", left)
	}
	fcancel()
	client.Close()
	return nil
}
