// Bare HTTP forwarders for bench/proxy_overhead.py --engines forward:STACK: what an
// HTTP stack alone adds to a request, with nothing mirrored, beside the proxy's engines
// in the same run. Each forwards every request to the upstream and copies the answer
// back, dropping hop-by-hop headers, as shadowline's Go engine does:
//
//	nethttp   net/http server, net/http Transport (what the Go engine is built on)
//	pooled    net/http server, a client of our own: a pool of kept-alive connections
//	          used from the handler's goroutine (no Transport read/write goroutines,
//	          no channel hand-offs); no stale-connection retry, so a bench tool only
//	fasthttp  valyala/fasthttp server and HostClient (no per-request allocation)
//
// Usage: forwarders STACK LISTEN_ADDR UPSTREAM_ADDR
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/valyala/fasthttp"
)

var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

func outgoing(r *http.Request, upstream string) *http.Request {
	out, _ := http.NewRequest(r.Method, "http://"+upstream+r.URL.RequestURI(), r.Body)
	out.ContentLength = r.ContentLength
	for k, v := range r.Header {
		if !hopByHop[k] {
			out.Header[k] = v
		}
	}
	return out
}

func answer(w http.ResponseWriter, resp *http.Response) error {
	for k, v := range resp.Header {
		if !hopByHop[k] {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	return err
}

func netHTTP(listen, upstream string) error {
	tr := &http.Transport{MaxIdleConnsPerHost: 512, DisableCompression: true}
	return http.ListenAndServe(listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := tr.RoundTrip(outgoing(r, upstream))
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		_ = answer(w, resp)
	}))
}

type conn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

type pool struct {
	mu   sync.Mutex
	idle []*conn
	addr string
}

func (p *pool) get() (*conn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		return nil, err
	}
	return &conn{c, bufio.NewReaderSize(c, 8192), bufio.NewWriterSize(c, 8192)}, nil
}

func (p *pool) put(c *conn) {
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

func pooled(listen, upstream string) error {
	p := &pool{addr: upstream}
	return http.ListenAndServe(listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := outgoing(r, upstream)
		c, err := p.get()
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		if err = out.Write(c.bw); err == nil {
			err = c.bw.Flush()
		}
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(c.br, out)
		}
		if err != nil {
			c.c.Close()
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		err = answer(w, resp)
		resp.Body.Close()
		if err == nil && !resp.Close {
			p.put(c)
		} else {
			c.c.Close()
		}
	}))
}

func fast(listen, upstream string) error {
	client := &fasthttp.HostClient{
		Addr: upstream, MaxConns: 512, DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing: true,
	}
	server := &fasthttp.Server{
		NoDefaultServerHeader: true, NoDefaultContentType: true, NoDefaultDate: true,
		DisableHeaderNamesNormalizing: true,
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.Request.Header.Del("Connection")
			if err := client.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.SetStatusCode(fasthttp.StatusBadGateway)
			}
			ctx.Response.Header.Del("Connection")
		},
	}
	return server.ListenAndServe(listen)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: forwarders nethttp|pooled|fasthttp LISTEN UPSTREAM")
		os.Exit(2)
	}
	stacks := map[string]func(string, string) error{"nethttp": netHTTP, "pooled": pooled, "fasthttp": fast}
	run, ok := stacks[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "forwarders: unknown stack %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := run(os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "forwarders:", err)
		os.Exit(1)
	}
}
