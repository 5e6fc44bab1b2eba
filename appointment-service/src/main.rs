use appointment_service::{config::Settings, startup::Application};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let (runtime, log) = (settings.runtime, settings.log.clone());
    common::runtime::run(runtime, &log, "appointment-service", async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped(common::shutdown::signal()).await
    })
}
