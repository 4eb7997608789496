;; A proxy-wasm 0.2.1 filter written by hand for what the SDK test filters do not reach:
;; properties, metrics, shared data, timers and logging.
;;
;; Each request gets headers from properties: `x-route` (route_name), `x-client`
;; (source.address), `x-subject` (identity.subject, when authenticated), `x-path`
;; (request.path); `x-hits` counts the requests all instances have seen (shared data,
;; compare-and-swap); the counter metric `requests` counts them too. The root context sets a
;; 20 ms timer and counts `ticks`. The configuration is logged at info on configure.
(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; Strings.
  (data (i32.const 0) "route_name")      ;; 10
  (data (i32.const 16) "x-route")        ;; 7
  (data (i32.const 32) "source.address") ;; 14
  (data (i32.const 48) "x-client")       ;; 8
  (data (i32.const 64) "identity\00subject") ;; 16
  (data (i32.const 96) "x-subject")      ;; 9
  (data (i32.const 112) "request\00path")  ;; 12
  (data (i32.const 128) "x-path")        ;; 6
  (data (i32.const 144) "requests")      ;; 8
  (data (i32.const 160) "ticks")         ;; 5
  (data (i32.const 176) "hits")          ;; 4
  (data (i32.const 192) "x-hits")        ;; 6
  ;; 1024..1040: out-pointers; 1100..1120: scratch; heap from 4096, reset per request.
  (global $heap (mut i32) (i32.const 4096))
  (global $requests (mut i32) (i32.const 0))
  (global $ticks (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $root i32)
    (global.set $heap (i32.const 4096)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 144) (i32.const 8) (i32.const 1024)))
    (global.set $requests (i32.load (i32.const 1024)))
    (drop (call $define_metric (i32.const 0) (i32.const 160) (i32.const 5) (i32.const 1024)))
    (global.set $ticks (i32.load (i32.const 1024)))
    (drop (call $set_tick (i32.const 20)))
    (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const 1028)))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 1))
  (func (export "proxy_on_tick") (param $root i32)
    (drop (call $increment_metric (global.get $ticks) (i64.const 1))))
  ;; Copy property (ptr, len) into request header (ptr, len) when it exists.
  (func $prop_header (param $p i32) (param $pl i32) (param $h i32) (param $hl i32)
    (if (i32.eqz (call $get_property (local.get $p) (local.get $pl) (i32.const 1024) (i32.const 1028)))
      (then (drop (call $add_header (i32.const 0) (local.get $h) (local.get $hl)
        (i32.load (i32.const 1024)) (i32.load (i32.const 1028)))))))
  ;; Write `n` in decimal at 1100; returns the length.
  (func $decimal (param $n i32) (result i32)
    (local $len i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $n))
    (local.set $len (i32.const 1))
    (block $done (loop $count
      (br_if $done (i32.lt_u (local.get $t) (i32.const 10)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $len))
    (local.set $t (local.get $n))
    (block $out (loop $digits
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 1100) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $out (i32.eqz (local.get $i)))
      (br $digits)))
    (local.get $len))
  ;; Add one to the shared `hits` counter (retrying on a CAS mismatch); returns the new value.
  (func $hit (result i32)
    (local $n i32) (local $cas i32)
    (block $stored (loop $retry
      (local.set $n (i32.const 1))
      (local.set $cas (i32.const 0))
      (if (i32.eqz (call $get_shared (i32.const 176) (i32.const 4) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
        (then
          (local.set $n (i32.add (i32.load (i32.load (i32.const 1024))) (i32.const 1)))
          (local.set $cas (i32.load (i32.const 1032)))))
      (i32.store (i32.const 1036) (local.get $n))
      (br_if $stored (i32.eqz (call $set_shared (i32.const 176) (i32.const 4) (i32.const 1036) (i32.const 4) (local.get $cas))))
      (br $retry)))
    (local.get $n))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $prop_header (i32.const 0) (i32.const 10) (i32.const 16) (i32.const 7))
    (call $prop_header (i32.const 32) (i32.const 14) (i32.const 48) (i32.const 8))
    (call $prop_header (i32.const 64) (i32.const 16) (i32.const 96) (i32.const 9))
    (call $prop_header (i32.const 112) (i32.const 12) (i32.const 128) (i32.const 6))
    (drop (call $increment_metric (global.get $requests) (i64.const 1)))
    (drop (call $add_header (i32.const 0) (i32.const 192) (i32.const 6)
      (i32.const 1100) (call $decimal (call $hit))))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
