//! `types`: the mdev types a parent offers.

use super::Result;

pub fn run(json: bool) -> Result<()> {
    let parent = vgpu_sim::types::VgpuParent::default();
    let reg = parent.registry();
    let rows: Vec<_> = reg
        .types()
        .iter()
        .map(|t| {
            let avail = reg.available_instances(&t.name).unwrap_or(0);
            (t.name.clone(), t.description.clone(), avail)
        })
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, d, a)| serde_json::json!({"name": n, "description": d, "available_instances": a}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{:<10} {:>9}  description", "type", "available");
        for (n, d, a) in rows {
            println!("{n:<10} {a:>9}  {d}");
        }
    }
    Ok(())
}
