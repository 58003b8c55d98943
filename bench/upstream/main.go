// A model endpoint for bench/proxy_overhead.py --upstream go: the same V1 answer as
// the aiohttp upstream ({"predictions": [sum(row) > 0 for each row]}) at a fraction of
// its CPU, so that at thousands of requests per second the proxy's cost is what the
// benchmark sees, not the upstream's.
package main

import (
	"encoding/json"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/v1/models/m:predict", func(w http.ResponseWriter, r *http.Request) {
		var doc struct {
			Instances [][]float64 `json:"instances"`
		}
		if err := json.NewDecoder(r.Body).Decode(&doc); err != nil {
			http.Error(w, `{"error": "expected {\"instances\": [...]}"}`, http.StatusBadRequest)
			return
		}
		preds := make([]int, len(doc.Instances))
		for i, row := range doc.Instances {
			sum := 0.0
			for _, x := range row {
				sum += x
			}
			if sum > 0 {
				preds[i] = 1
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string][]int{"predictions": preds})
	})
	_ = http.ListenAndServe("127.0.0.1:"+os.Args[1], nil)
}
