;; A proxy-wasm 0.2.1 filter exercising the header-map calls on pseudo-headers:
;; on the request it counts the pairs of proxy_get_header_map_pairs into `x-pair-count`,
;; replaces `:path` with `/rewritten` and removes `x-remove-me`; on the response it copies
;; `:status` into `x-status-seen`.
(module
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) ":path")          ;; 5
  (data (i32.const 16) "/rewritten")    ;; 10
  (data (i32.const 32) "x-remove-me")   ;; 11
  (data (i32.const 48) "x-pair-count")  ;; 12
  (data (i32.const 64) ":status")       ;; 7
  (data (i32.const 80) "x-status-seen") ;; 13
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32)
    (global.set $heap (i32.const 4096)))
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
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $pairs (i32.const 0) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $add (i32.const 0) (i32.const 48) (i32.const 12)
          (i32.const 1100) (call $decimal (i32.load (i32.load (i32.const 1024))))))))
    (drop (call $replace (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 10)))
    (drop (call $remove (i32.const 0) (i32.const 32) (i32.const 11)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get (i32.const 2) (i32.const 64) (i32.const 7) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $add (i32.const 2) (i32.const 80) (i32.const 13)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0)))
