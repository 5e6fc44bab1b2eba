use clap::Parser;
use gateway::{config::Settings, startup::Application};

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let (runtime, log) = (settings.runtime, settings.log.clone());
    common::runtime::run(runtime, &log, "gateway", async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped(common::shutdown::signal()).await
    })
}
