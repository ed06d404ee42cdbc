//! The report's stylesheet (inlined in `<style>`; the charts' classes are styled here).

pub(super) const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px}
header h1{font-size:22px;margin:0 0 2px}
.sub{color:#59636e;margin:0 0 16px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 4px}
p.note{color:#59636e;margin:2px 0 10px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-weight:600;color:#59636e;background:#f6f8fa}
.num{text-align:right;white-space:nowrap}
tr.worst td:first-child{border-left:3px solid #e15759}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;overflow-wrap:anywhere}
.good{color:#1a7f37}.bad{color:#cf222e}
.scroll{overflow-x:auto}
svg{display:block}
svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#59636e}
svg text.label{fill:#1f2328;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg text.title{font-weight:600;fill:#1f2328}
.grid line{stroke:#eaeef2}
.axis{stroke:#8c959f;stroke-width:1}
.bar,.hist-bar,.range-bar,.clip-line,.grid line,.axis{shape-rendering:crispEdges}
.bar.acc{fill:#4e79a7}.bar.acc.worst{fill:#e15759}.bar.acc.inf{fill:#c6d4e6}
.worst-band{fill:#e15759;fill-opacity:.1}
.mark.iso{fill:#f28e2b;stroke:#fff;stroke-width:1}.mark.iso.inf{fill:#fff;stroke:#f28e2b;stroke-width:1.5}
.leader{stroke:#8c959f;stroke-dasharray:2 2}
.hist-bar{fill:#76b7b2}
.clip-line{stroke:#7b3294;stroke-width:2}
.clip-zone{fill:#e15759;fill-opacity:.08}
.range-bar{fill:#59a14f}
.shared-range{stroke:#e15759;stroke-width:1.5;stroke-dasharray:6 4}
.zero{stroke:#8c959f;stroke-dasharray:3 3}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;color:#59636e;font-size:12.5px;margin:6px 0 0}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.acc{background:#4e79a7}.sw.worst{background:#e15759}.sw.inf{background:#c6d4e6}
.sw.iso{background:#f28e2b;border-radius:50%}.sw.clip{background:#7b3294;width:3px}
.sw.hist{background:#76b7b2}.sw.range{background:#59a14f}.sw.shared{border-top:2px dashed #e15759;height:0;border-radius:0}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.hists figure{margin:0;min-width:0}
.hists svg{max-width:100%;height:auto}
figcaption{font-size:12.5px;color:#59636e;margin:0 0 4px}
figcaption code{color:#1f2328}
details{margin-top:10px}
summary{cursor:pointer;color:#0969da}
.pt{fill:#bac4ce}.pt.front{fill:#4e79a7}.front-line{fill:none;stroke:#4e79a7;stroke-width:1.5}
.chosen{fill:none;stroke:#e15759;stroke-width:2}.floor{stroke:#e15759;stroke-dasharray:6 4}
.pmap{display:flex;flex-wrap:wrap;gap:2px;margin:6px 0}.pmap span{width:14px;height:22px;border-radius:2px}
.p-int4{background:#b07aa1}.p-int8-per-tensor{background:#76b7b2}.p-int8{background:#4e79a7}
.p-int16{background:#f28e2b}.p-fp16{background:#edc948}.p-fp32{background:#e15759}
footer{color:#8c959f;font-size:12px;text-align:right}
"#;
